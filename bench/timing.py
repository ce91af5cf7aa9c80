"""The project's one timing path: torch.utils.benchmark underneath, an explicit stop rule on top.

bench.profile, the search and the regression gate all time through `measure_latency`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.benchmark import Measurement, Timer


@dataclass(frozen=True)
class StopRule:
    """Keep timing until IQR / median < `rel_iqr` (after `min_runs` and `min_time_s`), or `max_time_s`."""

    rel_iqr: float = 0.05
    min_runs: int = 5
    min_time_s: float = 0.5
    max_time_s: float = 5.0

    def done(self, times: list[float], elapsed_s: float) -> bool:
        if elapsed_s >= self.max_time_s:
            return True
        if len(times) < self.min_runs or elapsed_s < self.min_time_s:
            return False
        return relative_iqr(times) < self.rel_iqr

    def converged(self, times: list[float]) -> bool:
        return len(times) >= self.min_runs and relative_iqr(times) < self.rel_iqr


def relative_iqr(times: list[float]) -> float:
    q1, median, q3 = np.quantile(times, [0.25, 0.5, 0.75])
    return float((q3 - q1) / median) if median > 0 else math.inf


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency in milliseconds, from a torch.utils.benchmark Measurement."""

    cold_ms: float  # the very first call: lazy initialisation, allocation, autotuning
    median_ms: float
    iqr_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    runs: int  # timed blocks
    number_per_run: int  # calls per block
    noisy: bool  # the stop rule ran out of time before IQR / median fell under its threshold
    times_ms: tuple[float, ...]

    @classmethod
    def from_measurement(cls, m: Measurement, number_per_run: int, cold_s: float, noisy: bool) -> "LatencyStats":
        times = np.asarray(m.times) * 1e3
        return cls(cold_ms=cold_s * 1e3, median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3,
                   p90_ms=float(np.quantile(times, 0.9)), min_ms=float(times.min()), mean_ms=m.mean * 1e3,
                   runs=len(times), number_per_run=number_per_run, noisy=noisy,
                   times_ms=tuple(float(t) for t in times))

    def row(self) -> dict[str, float | int | bool]:
        """The flat columns of a result row (the raw sample list stays out of tables)."""
        d = asdict(self)
        d.pop("times_ms")
        return {("latency_" + k if not k.startswith(("runs", "noisy", "number")) else k): v for k, v in d.items()}


# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the heap instead of returning it to the kernel (once per process).

    By default glibc hands large freed blocks back to the kernel, and the next call faults them in
    again. That page-fault cost is not the model's, and on a VM it changes under our feet: on this
    project's 2-core VM, Container-Light at batch 1 went from 62 to 101 ms within ten minutes with
    the default, and stayed at 61 ms with this. So every timing in the project runs the way a
    serving process that keeps its working set would. (Blocks over 32 MiB are still mapped afresh.)
    Returns False where the C library has no mallopt (not glibc): timing then runs as it is.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(fn: Callable[[], object], *, device: str | torch.device = "cpu", threads: int | None = None,
                    stop: StopRule = StopRule(), warmup_s: float = 0.2, min_block_s: float = 0.01,
                    label: str = "") -> LatencyStats:
    """Time `fn()` the way every figure in this project is timed.

    One cold call (timed on its own), warm-up, then blocks of `number` calls through
    torch.utils.benchmark.Timer (which synchronises CUDA around each block) until `stop` says done.
    """
    keep_freed_memory()
    device = torch.device(device)
    threads = threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        cold_s = time.perf_counter() - start

        warm_start, warm_calls = time.perf_counter(), 0
        while warm_calls < 2 or time.perf_counter() - warm_start < warmup_s:
            fn()
            warm_calls += 1
        _synchronize(device)
        per_call = max((time.perf_counter() - warm_start) / warm_calls, 1e-9)
        number = max(1, math.ceil(min_block_s / per_call))

        timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=label)
        blocks: list[Measurement] = []
        times: list[float] = []
        began = time.perf_counter()
        while not stop.done(times, time.perf_counter() - began):
            blocks.append(timer.timeit(number))
            times.extend(blocks[-1].times)
        (merged,) = Measurement.merge(blocks)
        return LatencyStats.from_measurement(merged, number, cold_s, noisy=not stop.converged(times))
    finally:
        torch.set_num_threads(previous_threads)
