"""Probe: does spreading a row's blocks over time make its figure agree better between two moments of a process?

Records every block of nine rows (fast, OpenVINO and ONNX Runtime; blocks, Container-Light) timed in shuffled
interleaved rounds with the machine's calibration between rounds, for SECONDS, into OUT (JSON). Then
`drift_windows.py OUT` compares each row's normalised median over a window with the same window LAG_S later:

    python results/reproducibility/probes/drift.py 540 drift.json
    python results/reproducibility/probes/drift_windows.py drift.json
"""
import json
import random
import sys
import time

import torch

from bench.machine import machine_calibration
from bench.targets import BlockTarget, NetworkTarget
from bench.timing import _warm_up, keep_freed_memory, time_calls
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
    cpu = torch.device("cpu")
    torch.set_num_threads(2)
    keep_freed_memory()
    work = []
    for _, target, batch, runtime in ROWS:
        w = build_workload(target, batch, Options(runtime=runtime, threads=2))
        _, per_call = _warm_up(w.step, cpu, 0.5)
        work.append((w.step, max(1, round(0.05 / per_call)), w.settle_s, per_call < 0.025))
    calibration = machine_calibration("cpu", 2)
    _warm_up(calibration.step, cpu, 0.5)

    def calibrate() -> float:
        calibration.step()
        return time_calls(calibration.step, 1, cpu) * 1e3

    order, rounds = random.Random(0), []
    began, edge = time.perf_counter(), calibrate()
    while time.perf_counter() - began < seconds:
        blocks = [0.0] * len(work)
        for i in order.sample(range(len(work)), len(work)):
            step, number, settle_s, warm = work[i]
            if warm:
                step()
            blocks[i] = time_calls(step, number, cpu) * 1e3 / number
            settled = time.perf_counter()
            while time.perf_counter() - settled < settle_s:
                calibration.step()
        after = calibrate()
        rounds.append([time.perf_counter() - began, edge, after, blocks])
        edge = after
    with open(out, "w") as f:
        json.dump({"rows": [r[0] for r in ROWS], "reference_ms": calibration.reference_ms, "rounds": rounds}, f)


if __name__ == "__main__":
    main(float(sys.argv[1]), sys.argv[2])
