"""Peak resident memory of one call, measured in a separate worker process.

The harness's own process holds other models, caches and the profiler; a worker that builds only
the workload being measured gives a figure that means something, and the same one for every
runtime (bench.runtimes), whichever allocator it uses. One worker is reused across
measurements: on Linux, writing 5 to /proc/self/clear_refs resets the high-water mark.
"""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch

from bench.targets import Target
from bench.options import Options
from bench.workload import build_workload


@dataclass(frozen=True)
class RssPeak:
    peak_bytes: int  # the worker's peak resident set over two calls of the workload
    before_call_bytes: int  # its resident set once the workload was built
    call_delta_bytes: int  # peak - before; -1 where the kernel cannot reset the peak (no clear_refs)


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
    import resource  # here, not at the top: Unix only, and only where there is no /proc


    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _measure(target: Target, batch_size: int, options: Options, threads: int) -> RssPeak:
    torch.set_num_threads(threads)
    # The runtime's step alone stays resident: the reference module it was converted from goes (for the
    # reference runtime it is what runs), so every runtime's figure is of what a user's process holds.
    step = build_workload(target, batch_size, options, check=False).step
    gc.collect()
    baseline = psutil.Process(os.getpid()).memory_info().rss
    exact = _reset_peak_rss()
    step()
    step()
    peak = _peak_rss_bytes()
    return RssPeak(peak_bytes=peak, before_call_bytes=baseline, call_delta_bytes=peak - baseline if exact else -1)


class RssWorker:
    """A spawned worker process that reports the peak RSS of workloads, one at a time."""

    def __init__(self) -> None:
        exact = Path("/proc/self/clear_refs").exists()
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                         max_tasks_per_child=None if exact else 1)

    def measure(self, target: Target, batch_size: int, options: Options, threads: int) -> RssPeak:
        return self._pool.submit(_measure, target, batch_size, options, threads).result()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)

    def __enter__(self) -> "RssWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
