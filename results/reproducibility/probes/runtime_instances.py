"""Probe: does a converted workload carry an offset of its own instance (a session's buffers' place in memory)?

For a few memory-heavy rows (the ones that disagreed most between the processes of `python -m bench repeat`),
INSTANCES separately converted instances each, all timed in bench's interleaved rounds with the machine's
calibration (bench.timing.measure_rounds) for SECONDS in one process. Prints, per row, each instance's normalised
median (ms) and the instances' spread (max / min - 1). Run it in several processes one after another, nothing else
running, and compare the spread inside a process with the spread between processes:

    for p in 1 2 3; do python results/reproducibility/probes/runtime_instances.py 60; done
"""
import sys

from bench.targets import BlockTarget
from rows import build, label, time_rows

INSTANCES = 3
ROWS = [(BlockTarget("mix", 64, 56), 1, "onnxruntime"),
        (BlockTarget("mix", 64, 56), 1, "openvino"),
        (BlockTarget("mix", 128, 28), 16, "onnxruntime"),
        (BlockTarget("mix", 128, 28), 16, "fast")]


def main(seconds: float) -> None:
    stats = time_rows(build([row for row in ROWS for _ in range(INSTANCES)]), seconds)
    for r, row in enumerate(ROWS):
        medians = [s.norm_ms for s in stats[r * INSTANCES:(r + 1) * INSTANCES]]
        print(f"{label(row)}: {' '.join(f'{m:.2f}' for m in medians)}  spread {max(medians) / min(medians) - 1:.1%}",
              flush=True)


if __name__ == "__main__":
    main(float(sys.argv[1]))
