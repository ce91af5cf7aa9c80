"""Probe: do memory-heavy rows carry a per-process offset from how their large buffers are backed?

The rows that disagreed most between the processes of `python -m bench repeat` hold large buffers (the 3136 x 3136
affinity of mix@64x56, 150 MB of affinities at mix@128x28 b16). This machine is a Firecracker VM whose transparent
huge pages are `madvise`: without asking, every buffer is backed by 4 KiB pages. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc ask (madvise(MADV_HUGEPAGE)) for all of the process's heap, torch's tensors
and the runtimes' arenas alike. This probe times the rows (rows.time_rows: bench's interleaved rounds with the
machine's calibration) for SECONDS and prints one JSON line: the rows' labels, their normalised and measured medians
and the process's AnonHugePages. Run it in alternating processes with and without the tunable, nothing else running:

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

from bench.targets import BlockTarget
from rows import build, label, time_rows

# Two sessions of mix@64x56 b1 on ONNX Runtime: a session's own offset shows beside the process's.
ROWS = [(BlockTarget("mix", 64, 56), 1, "fast"), (BlockTarget("attn_mlp", 64, 56), 1, "fast"),
        (BlockTarget("mix", 128, 28), 16, "fast"), (BlockTarget("conv", 320, 14), 1, "fast"),
        (BlockTarget("mix", 64, 56), 1, "onnxruntime"), (BlockTarget("mix", 64, 56), 1, "onnxruntime"),
        (BlockTarget("mix", 128, 28), 16, "onnxruntime"), (BlockTarget("mix", 64, 56), 1, "openvino")]


def anon_huge_kb() -> int:
    match = re.search(r"AnonHugePages:\s+(\d+)", Path("/proc/self/smaps_rollup").read_text())
    return int(match.group(1)) if match else -1


def main(seconds: float) -> None:
    stats = time_rows(build(ROWS), seconds)
    print(json.dumps({"tunables": os.environ.get("GLIBC_TUNABLES", ""), "anon_huge_kb": anon_huge_kb(),
                      "machine_speed": round(stats[0].machine_speed, 3), "rows": [label(r) for r in ROWS],
                      "norm_ms": [round(s.norm_ms, 3) for s in stats],
                      "measured_ms": [round(s.median_ms, 3) for s in stats]}))


if __name__ == "__main__":
    main(float(sys.argv[1]))
