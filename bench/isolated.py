"""Peak resident memory of one call, measured in a separate worker process.

The harness's own process holds other models, caches and the profiler; a worker that builds only
the workload being measured gives a figure that means something. One worker is reused across
measurements: on Linux, writing 5 to /proc/self/clear_refs resets the high-water mark.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(target, batch_size, options, threads) -> dict[str, int]:
    import torch

    from bench.workload import build_workload

    torch.set_num_threads(threads)
    workload = build_workload(target, batch_size, options)
    baseline = psutil.Process(os.getpid()).memory_info().rss
    exact = _reset_peak_rss()
    workload.step()
    workload.step()
    peak = _peak_rss_bytes()
    return {"rss_peak_bytes": peak, "rss_before_call_bytes": baseline,
            "rss_call_delta_bytes": peak - baseline if exact else -1}


class RssWorker:
    """A spawned worker process that reports the peak RSS of workloads, one at a time."""

    def __init__(self) -> None:
        exact = Path("/proc/self/clear_refs").exists()
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                         max_tasks_per_child=None if exact else 1)

    def measure(self, target, batch_size, options, threads) -> dict[str, int]:
        return self._pool.submit(_measure, target, batch_size, options, threads).result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> "RssWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
