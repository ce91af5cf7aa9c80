"""The project's one timing path: an explicit loop around perf_counter, torch.utils.benchmark's statistics.

bench.profile, the search and the regression gate all time through this module: `measure_latency`
for a workload's latency, `measure_interleaved` for the gate's call-by-call comparison of two
workloads. Both time through `time_calls`, one block of calls with the device synchronised at its
edges, and no untimed calls between blocks: every call after the warm-up is a timed call.

(torch's own `Timer.timeit(number)` runs max(number // 100, 2) untimed calls before every block,
so a workload slower than the block target cost three calls per timed call; hence the loop here.)

This module imports nothing from the project: the regression gate loads it by file path into worker
processes that measure another revision, so that both sides are timed by the same instrument.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

# A process's first measurement on a device runs slow (thread pools start, kernel libraries load,
# lazy initialisation): it warms up for at least this long, so the first figure of a process (the
# first trial of a search, the first entry of a predictor table) is timed like the later ones.
FIRST_WARMUP_S = 0.5
_warmed_up: set[tuple[str, int]] = set()  # (device, threads) already measured in this process


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


# Columns of LatencyStats.row() that keep their own name; every other field is prefixed "latency_".
_UNPREFIXED = ("runs", "number_per_run", "noisy", "warmup_calls", "timed_calls")


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
    warmup_calls: int = 0  # untimed calls after the cold call, all in the one warm-up phase
    timed_calls: int = 0  # runs x number_per_run: every call after the warm-up

    @classmethod
    def from_measurement(cls, m: Measurement, number_per_run: int, cold_s: float, noisy: bool,
                         warmup_calls: int = 0) -> LatencyStats:
        times = np.asarray(m.times) * 1e3
        return cls(cold_ms=cold_s * 1e3, median_ms=m.median * 1e3, iqr_ms=m.iqr * 1e3,
                   p90_ms=float(np.quantile(times, 0.9)), min_ms=float(times.min()), mean_ms=m.mean * 1e3,
                   runs=len(times), number_per_run=number_per_run, noisy=noisy,
                   times_ms=tuple(float(t) for t in times), warmup_calls=warmup_calls,
                   timed_calls=len(times) * number_per_run)

    def row(self) -> dict[str, float | int | bool]:
        """The flat columns of a result row (the raw sample list stays out of tables)."""
        d = asdict(self)
        d.pop("times_ms")
        return {(k if k in _UNPREFIXED else "latency_" + k): v for k, v in d.items()}


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


def time_calls(fn: Callable[[], object], number: int, device: torch.device) -> float:
    """Seconds taken by `number` back-to-back calls of `fn`: the block every timing here is made of.

    The device is synchronised at both edges (as torch.utils.benchmark.Timer does on CUDA), so the
    block holds all the work its calls launched and none of the work launched before it. Python's
    garbage collector is off inside the block, as in timeit (which Timer runs): a collection of a
    big process's heap (a search holds Optuna, pandas and torch) costs milliseconds, and it belongs
    to the process, not to the workload. It runs between blocks instead.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(number):
            fn()
        _synchronize(device)
        return time.perf_counter() - start
    finally:
        if collecting:
            gc.enable()


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[int]:
    """Run with `threads` intra-op threads (default: as now); the previous count comes back after."""
    previous = torch.get_num_threads()
    threads = threads or previous
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)


def measure_latency(fn: Callable[[], object], *, device: str | torch.device = "cpu", threads: int | None = None,
                    stop: StopRule = StopRule(), warmup_s: float = 0.2, min_block_s: float = 0.01,
                    label: str = "") -> LatencyStats:
    """Time `fn()` the way every figure in this project is timed.

    One cold call (timed on its own), one warm-up phase (at least two calls and `warmup_s`;
    FIRST_WARMUP_S for the first measurement on a device and thread count in this process), then
    timed blocks of `number` calls, `number` making a block last about `min_block_s`, until `stop`
    says done. Nothing runs between the blocks: after the warm-up, every call is timed.
    """
    keep_freed_memory()
    device = torch.device(device)
    with intra_op_threads(threads) as threads:
        cold_s = time_calls(fn, 1, device)

        first = (str(device), threads) not in _warmed_up
        warmup_s = max(warmup_s, FIRST_WARMUP_S) if first else warmup_s
        warm_start, warmup_calls = time.perf_counter(), 0
        while warmup_calls < 2 or time.perf_counter() - warm_start < warmup_s:
            fn()
            warmup_calls += 1
        _synchronize(device)
        per_call = max((time.perf_counter() - warm_start) / warmup_calls, 1e-9)
        _warmed_up.add((str(device), threads))
        number = max(1, math.ceil(min_block_s / per_call))

        blocks: list[float] = []  # seconds per block of `number` calls
        times: list[float] = []  # seconds per call, block by block
        began = time.perf_counter()
        while not blocks or not stop.done(times, time.perf_counter() - began):  # at least one block
            blocks.append(time_calls(fn, number, device))
            times.append(blocks[-1] / number)
    measurement = Measurement(number_per_run=number, raw_times=blocks,
                              task_spec=TaskSpec(stmt="fn()", setup="pass", label=label or None, num_threads=threads))
    return LatencyStats.from_measurement(measurement, number, cold_s, noisy=not stop.converged(times),
                                         warmup_calls=warmup_calls)


@dataclass(frozen=True)
class InterleavedTimes:
    """Single-call times of two workloads measured in turn: first, second, first, ..., first."""

    first_ms: tuple[float, ...]  # pairs + 1 calls (fewer if max_time_s ran out)
    second_ms: tuple[float, ...]  # pairs calls, second_ms[i] timed between first_ms[i] and first_ms[i + 1]
    warmup_calls: int  # untimed calls in all (measure_interleaved's warmup_calls before each timed call)
    timed_calls: int


def measure_interleaved(first: Callable[[], object], second: Callable[[], object], pairs: int, *,
                        warmup_calls: int = 2, device: str | torch.device = "cpu", threads: int | None = None,
                        max_time_s: float = math.inf) -> InterleavedTimes:
    """Time single calls of `first` and `second` in turn, `pairs` + 1 of `first` and `pairs` of `second`.

    Before each timed call, `warmup_calls` untimed calls of the same workload bring its data back
    into the caches the other workload used, so each figure is a warm call of its own workload; a
    drift of the machine's speed lands on both alike. Stops early (after a whole timed call) once
    `max_time_s` has passed, so a workload far slower than expected cannot hold its caller forever.
    """
    keep_freed_memory()
    device = torch.device(device)
    times: tuple[list[float], list[float]] = ([], [])
    untimed = 0
    with intra_op_threads(threads):
        began = time.perf_counter()
        for i in range(2 * pairs + 1):
            if i > 0 and time.perf_counter() - began >= max_time_s:
                break
            fn = second if i % 2 else first
            for _ in range(warmup_calls):
                fn()
            untimed += warmup_calls
            times[i % 2].append(time_calls(fn, 1, device) * 1e3)
    return InterleavedTimes(first_ms=tuple(times[0]), second_ms=tuple(times[1]), warmup_calls=untimed,
                            timed_calls=len(times[0]) + len(times[1]))
