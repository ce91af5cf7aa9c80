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

from bench.machine import machine_calibration
from bench.targets import BlockTarget, NetworkTarget
from bench.timing import StopRule, measure_rounds
from bench.workload import Options, build_workload

ROWS = [("conv@64x56 b8 fast", BlockTarget("conv", 64, 56), 8, "fast"),
        ("conv@128x28 b16 fast", BlockTarget("conv", 128, 28), 16, "fast"),
        ("mix@320x14 b1 fast", BlockTarget("mix", 320, 14), 1, "fast"),
        ("mix@320x14 b32 fast", BlockTarget("mix", 320, 14), 32, "fast"),
        ("attn_mlp@320x14 b8 fast", BlockTarget("attn_mlp", 320, 14), 8, "fast"),
        ("mix@512x7 b64 fast", BlockTarget("mix", 512, 7), 64, "fast"),
        ("container_light b1 fast", NetworkTarget.named("container_light"), 1, "fast"),
        ("container_light b1 openvino", NetworkTarget.named("container_light"), 1, "openvino"),
        ("conv@128x28 b16 onnxruntime", BlockTarget("conv", 128, 28), 16, "onnxruntime")]


def main(seconds: float, out: str) -> None:
    work = [build_workload(target, batch, Options(runtime=runtime, threads=2)) for _, target, batch, runtime in ROWS]
    share = seconds / len(work)  # measure_rounds counts each variant's share of the wall time
    began = time.perf_counter()
    stats = measure_rounds([w.step for w in work], threads=2, calibration=machine_calibration("cpu", 2),
                           stop=StopRule(min_runs=5, min_time_s=share, max_time_s=share),
                           settle_s=[w.settle_s for w in work], labels=[r[0] for r in ROWS])
    with open(out, "w") as f:
        json.dump({"rows": [r[0] for r in ROWS], "seconds": time.perf_counter() - began,
                   "measured_ms": [list(s.times_ms) for s in stats],
                   "normalised_ms": [list(s.rounds_norm_ms) for s in stats]}, f)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
