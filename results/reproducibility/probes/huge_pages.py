"""Probe: do memory-heavy rows carry a per-process offset from how their large buffers are backed?

The rows that disagreed most between the processes of `python -m bench repeat` hold large buffers (the 3136 x 3136
affinity of mix@64x56, 150 MB of affinities at mix@128x28 b16). This machine is a Firecracker VM whose transparent
huge pages are `madvise`: without asking, every buffer is backed by 4 KiB pages. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc ask (madvise(MADV_HUGEPAGE)) for all of the process's heap, torch's tensors
and the runtimes' arenas alike. This probe times the rows (bench's interleaved rounds with the machine's calibration,
bench.timing.measure_rounds) for SECONDS and prints one JSON line: each row's normalised median and the process's
AnonHugePages. Run it in alternating processes with and without the tunable, nothing else running:

    for p in 1 2 3; do
      python results/reproducibility/probes/huge_pages.py 40
      GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python results/reproducibility/probes/huge_pages.py 40
    done
"""
import json
import os
import re
import sys
from pathlib import Path

from bench.machine import machine_calibration
from bench.targets import BlockTarget
from bench.timing import StopRule, measure_rounds
from bench.workload import Options, build_workload

ROWS = [("mix@64x56 b1 fast", BlockTarget("mix", 64, 56), 1, "fast"),
        ("attn_mlp@64x56 b1 fast", BlockTarget("attn_mlp", 64, 56), 1, "fast"),
        ("mix@128x28 b16 fast", BlockTarget("mix", 128, 28), 16, "fast"),
        ("conv@320x14 b1 fast", BlockTarget("conv", 320, 14), 1, "fast"),
        ("mix@64x56 b1 onnxruntime a", BlockTarget("mix", 64, 56), 1, "onnxruntime"),
        ("mix@64x56 b1 onnxruntime b", BlockTarget("mix", 64, 56), 1, "onnxruntime"),
        ("mix@128x28 b16 onnxruntime", BlockTarget("mix", 128, 28), 16, "onnxruntime"),
        ("mix@64x56 b1 openvino", BlockTarget("mix", 64, 56), 1, "openvino")]


def anon_huge_kb() -> int:
    match = re.search(r"AnonHugePages:\s+(\d+)", Path("/proc/self/smaps_rollup").read_text())
    return int(match.group(1)) if match else -1


def main(seconds: float) -> None:
    work = [build_workload(target, batch, Options(runtime=runtime, threads=2), check=False)
            for _, target, batch, runtime in ROWS]
    share = seconds / len(work)
    stats = measure_rounds([w.step for w in work], threads=2, calibration=machine_calibration("cpu", 2),
                           stop=StopRule(min_runs=5, min_time_s=share, max_time_s=share),
                           settle_s=[w.settle_s for w in work])
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES", ""), "anon_huge_kb": anon_huge_kb(),
                      "machine_speed": round(stats[0].machine_speed, 3),
                      "norm_ms": {label: round(s.norm_ms, 3) for (label, *_), s in zip(ROWS, stats)},
                      "measured_ms": {label: round(s.median_ms, 3) for (label, *_), s in zip(ROWS, stats)}}))


if __name__ == "__main__":
    main(float(sys.argv[1]))
