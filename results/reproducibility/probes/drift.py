"""Probe: does spreading a row's blocks over time make its figure agree better between two moments of a process?

Times nine rows (fast, OpenVINO and ONNX Runtime; blocks, Container-Light) in bench's own randomized interleaved
rounds (bench.timing.measure_rounds, with the machine's calibration) for SECONDS in all, and writes every row's
per-block times, as measured and normalised, to OUT (JSON). Then `drift_windows.py OUT` compares each row's figure
over a window of rounds with the same window LAG_S later:

    python results/reproducibility/probes/drift.py 540 drift.json
    python results/reproducibility/probes/drift_windows.py drift.json
"""
import json
import sys
import time

from bench.targets import BlockTarget, NetworkTarget
from rows import build, label, time_rows

ROWS = [(BlockTarget("conv", 64, 56), 8, "fast"),
        (BlockTarget("conv", 128, 28), 16, "fast"),
        (BlockTarget("mix", 320, 14), 1, "fast"),
        (BlockTarget("mix", 320, 14), 32, "fast"),
        (BlockTarget("attn_mlp", 320, 14), 8, "fast"),
        (BlockTarget("mix", 512, 7), 64, "fast"),
        (NetworkTarget.named("container_light"), 1, "fast"),
        (NetworkTarget.named("container_light"), 1, "openvino"),
        (BlockTarget("conv", 128, 28), 16, "onnxruntime")]


def main(seconds: float, out: str) -> None:
    work = build(ROWS, check=True)
    began = time.perf_counter()
    stats = time_rows(work, seconds)
    with open(out, "w") as f:
        json.dump({"rows": [label(r) for r in ROWS], "seconds": time.perf_counter() - began,
                   "measured_ms": [list(s.times_ms) for s in stats],
                   "normalised_ms": [list(s.rounds_norm_ms) for s in stats]}, f)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
