"""The project's one timing path: an explicit loop around perf_counter, torch.utils.benchmark's statistics.

bench.profile, the search and the regression gate all time through this module: `measure_rounds`
for the variants of one workload (runtimes, dtypes, layouts) in randomized interleaved rounds,
`measure_latency` for one, `measure_interleaved` for the gate's call-by-call comparison of two
workloads. All time through `time_calls`, one block of calls with the device synchronised at its
edges. With a `Calibration` (bench.machine), the calibration workload is timed between blocks and
every figure is also given at the machine's reference speed, so that a drift of the machine's
speed between two runs leaves the figures alone.

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
import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

# A process's first measurement on a device runs slow (thread pools start, kernel libraries load,
# lazy initialisation): it warms up for at least this long, so the first figure of a process (the
# first trial of a search, the first entry of a predictor table) is timed like the later ones.
FIRST_WARMUP_S = 0.5
_warmed_up: set[tuple[str, int]] = set()  # (device, threads) already measured in this process
CALIBRATION_WARMUP_S = 0.2
CALIBRATION_WINDOW = 2  # rounds either side whose calibration a round's is the median of (round_calibration)
# A call shorter than this gets one untimed call before each of its blocks in a calibrated measurement:
# the calibration workload (~14 MB) pushes the call's data out of the caches, and a short call's first
# call after it would be slow. A longer call re-reads its data many times; the cost is under 1% there.
WARM_CALL_BELOW_S = 0.025


@dataclass(frozen=True)
class StopRule:
    """When to stop timing, after `min_runs` blocks and `min_time_s`, at the latest at `max_time_s`.

    Uncalibrated, timing stops once IQR / median of the per-call times < `rel_iqr`. Calibrated (the
    normalised per-block times of bench.timing.measure_rounds), once the 95% interval of their median
    lies within +-`rel_interval` of it; a figure whose interval is wider at `max_time_s` is `noisy`.
    With `decide_ms` (the search's budget) timing goes on, for up to `decide_extra_s` more, while that
    interval contains it: a figure near a threshold is measured until it is clear which side it is on.
    """

    rel_iqr: float = 0.05
    min_runs: int = 5
    min_time_s: float = 0.5
    max_time_s: float = 5.0
    rel_interval: float = 0.02
    decide_ms: float | None = None
    decide_extra_s: float = 0.0

    def done(self, times: list[float], elapsed_s: float) -> bool:
        if elapsed_s >= self.max_time_s:
            return True
        if len(times) < self.min_runs or elapsed_s < self.min_time_s:
            return False
        return relative_iqr(times) < self.rel_iqr

    def converged(self, times: list[float]) -> bool:
        return len(times) >= self.min_runs and relative_iqr(times) < self.rel_iqr

    def precise(self, normalised: list[float]) -> bool:
        """The median's 95% interval within +-rel_interval of it (calibrated measurements)."""
        low, high = median_interval(normalised)
        return len(normalised) >= self.min_runs and (high - low) / 2 <= self.rel_interval * float(np.median(normalised))

    def done_calibrated(self, normalised: list[float], elapsed_s: float) -> bool:
        if elapsed_s >= self.max_time_s:
            return True
        return elapsed_s >= self.min_time_s and self.precise(normalised)


def relative_iqr(times: list[float]) -> float:
    q1, median, q3 = np.quantile(times, [0.25, 0.5, 0.75])
    return float((q3 - q1) / median) if median > 0 else math.inf


# Columns of LatencyStats.row() that keep their own name; every other field is prefixed "latency_".
_UNPREFIXED = ("runs", "number_per_run", "noisy", "warmup_calls", "timed_calls", "machine_speed", "calibration_ms",
               "reference_calibration_ms", "untimed_calls")


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
    warmup_calls: int = 0  # untimed calls after the cold call, in the warm-up phase
    timed_calls: int = 0  # runs x number_per_run
    # Calibrated (measure_rounds with a Calibration): the figures at the machine's reference speed.
    norm_ms: float = math.nan  # median over the blocks of the normalised per-call time
    norm_low_ms: float = math.nan  # 95% interval of that median (median_interval)
    norm_high_ms: float = math.nan
    machine_speed: float = math.nan  # norm_ms / median_ms: below 1 the machine ran slower than its reference
    calibration_ms: float = math.nan  # the calibration workload's median time around the blocks
    reference_calibration_ms: float = math.nan  # ... at the machine's reference speed (bench.machine)
    untimed_calls: int = 0  # untimed calls before blocks (WARM_CALL_BELOW_S)
    rounds_norm_ms: tuple[float, ...] = ()  # the normalised per-call time of each block (round)

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
        d.pop("rounds_norm_ms")
        return {(k if k in _UNPREFIXED else "latency_" + k): v for k, v in d.items()}


@dataclass(frozen=True)
class Calibration:
    """The calibration workload and its per-call time at the machine's reference speed (bench.machine)."""

    step: Callable[[], object]
    reference_ms: float


def calibration_workload(device: str | torch.device = "cpu") -> Callable[[], torch.Tensor]:
    """The fixed calibration workload: one GEMM (compute-bound) and one depthwise conv (memory-bound).

    Timed between the blocks of every measurement, so a uniformly faster or slower machine of the
    same kind, or a busier moment, changes both alike and leaves their ratio alone. It is the
    regression gate's since its first version, so gate baselines stay comparable.
    """
    g = torch.Generator().manual_seed(1234)
    a = torch.randn(768, 768, generator=g).to(device)
    b = torch.randn(768, 768, generator=g).to(device)
    x = torch.randn(1, 128, 112, 112, generator=g).to(device)
    w = torch.randn(128, 1, 5, 5, generator=g).to(device)

    def step():
        with torch.inference_mode():
            torch.mm(a, b)
            return F.conv2d(x, w, padding=2, groups=128)

    return step


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
                    label: str = "", calibration: Calibration | None = None) -> LatencyStats:
    """Time `fn()` the way every figure in this project is timed: `measure_rounds` with one variant."""
    return measure_rounds([fn], device=device, threads=threads, stop=stop, warmup_s=warmup_s,
                          min_block_s=min_block_s, labels=[label], calibration=calibration)[0]


def measure_rounds(fns: Sequence[Callable[[], object]], *, device: str | torch.device = "cpu",
                   threads: int | None = None, stop: StopRule = StopRule(), warmup_s: float = 0.2,
                   min_block_s: float = 0.05, labels: Sequence[str] = (), calibration: Calibration | None = None,
                   seed: int = 0, settle_s: Sequence[float] = ()) -> list[LatencyStats]:
    """Time the variants `fns` of one workload in randomized multiple interleaved rounds.

    Each variant first gets one cold call (timed on its own) and one warm-up phase (at least two calls
    and `warmup_s`; FIRST_WARMUP_S for the first measurement on a device and thread count in this
    process); `number` calls make its block last about `min_block_s`. Then rounds: in each, every
    variant's block in a shuffled order (seeded: the same order on every run), until `stop` says
    every variant is done (Abedi and Brecht, ICPE 2017: a drift of the machine's speed lands on all
    variants alike instead of on whichever ran during it).

    With a `calibration`, its workload is timed before the first round and after every round, and each
    block's per-call time is divided by its round's calibration time (round_calibration) and multiplied
    by the calibration's reference time: the figure the block would have given at the machine's
    reference speed (`norm_*`). Each timed calibration call follows one untimed one (its data back in
    the caches, as when the reference was measured), and after a block of variant i untimed
    calibration calls run for `settle_s[i]` (a runtime whose worker threads stay busy after a call,
    which would slow whatever runs next). A call shorter than WARM_CALL_BELOW_S gets one untimed call
    before each block, to bring its data back into the caches. Without a calibration, nothing runs
    between blocks: after the warm-up, every call is timed.
    """
    keep_freed_memory()
    device = torch.device(device)
    fns = list(fns)
    labels = list(labels) + [""] * (len(fns) - len(labels))
    settles = list(settle_s) + [0.0] * (len(fns) - len(settle_s))
    with intra_op_threads(threads) as threads:
        variants = [_warmed_up_variant(fn, device, threads, warmup_s, min_block_s, calibration) for fn in fns]
        if calibration is not None:
            _warm_up(calibration.step, device, CALIBRATION_WARMUP_S)
        order = random.Random(seed)
        calibration_ms: list[float] = []  # at the edges of the rounds: before the first, after each

        def calibrate() -> None:
            calibration.step()  # untimed: its data back in the caches, as when the reference was measured
            calibration_ms.append(time_calls(calibration.step, 1, device) * 1e3)

        def settle(seconds: float) -> None:
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                calibration.step()

        if calibration is not None:
            calibrate()
        began = time.perf_counter()
        while True:
            for i in order.sample(range(len(variants)), len(variants)):
                v = variants[i]
                for _ in range(v.warm_calls):
                    v.fn()
                v.blocks.append(time_calls(v.fn, v.number, device))
                if calibration is not None and settles[i] > 0:
                    settle(settles[i])
            if calibration is not None:
                calibrate()
                around = round_calibration(calibration_ms)
                for v in variants:
                    v.normalise(around, calibration.reference_ms)
            elapsed = (time.perf_counter() - began) / len(variants)
            if all(v.done(stop, elapsed) for v in variants):
                break
    return [v.stats(stop, label, threads, calibration) for v, label in zip(variants, labels)]


@dataclass
class _Variant:
    """One variant's state during measure_rounds."""

    fn: Callable[[], object]
    cold_s: float
    warmup_calls: int
    number: int
    warm_calls: int  # untimed calls before each block (calibrated runs, short calls only)
    blocks: list[float] = field(default_factory=list)  # seconds per block of `number` calls
    normalised: list[float] = field(default_factory=list)  # ms per call at the reference speed, per block
    calibration_ms: list[float] = field(default_factory=list)  # the calibration of each block's round

    @property
    def times(self) -> list[float]:
        return [b / self.number for b in self.blocks]

    def normalise(self, around: list[float], reference_ms: float) -> None:
        """Block r (of round r) at the reference speed: its per-call ms x reference / the round's calibration."""
        self.calibration_ms = around[:len(self.blocks)]
        self.normalised = [b / self.number * 1e3 * reference_ms / c for b, c in zip(self.blocks, self.calibration_ms)]

    def done(self, stop: StopRule, elapsed_s: float) -> bool:
        """The stop rule on the interval of the normalised median when calibrated (the machine's drift is not
        the workload's spread); with `stop.decide_ms`, also until that interval is on one side of it."""
        if not self.normalised:
            return stop.done(self.times, elapsed_s)
        if not stop.done_calibrated(self.normalised, elapsed_s):
            return False
        if stop.decide_ms is None or not self.normalised or elapsed_s >= stop.max_time_s + stop.decide_extra_s:
            return True
        low, high = median_interval(self.normalised)
        return not low <= stop.decide_ms <= high

    def stats(self, stop: StopRule, label: str, threads: int, calibration: Calibration | None) -> LatencyStats:
        measurement = Measurement(number_per_run=self.number, raw_times=self.blocks,
                                  task_spec=TaskSpec(stmt="fn()", setup="pass", label=label or None,
                                                     num_threads=threads))
        stats = LatencyStats.from_measurement(measurement, self.number, self.cold_s,
                                              noisy=not stop.converged(self.times), warmup_calls=self.warmup_calls)
        if calibration is None:
            return stats
        norm = float(np.median(self.normalised))
        low, high = median_interval(self.normalised)
        return replace(stats, norm_ms=norm, norm_low_ms=low, norm_high_ms=high, machine_speed=norm / stats.median_ms,
                       calibration_ms=float(np.median(self.calibration_ms)),
                       reference_calibration_ms=calibration.reference_ms,
                       noisy=not stop.precise(self.normalised),
                       rounds_norm_ms=tuple(self.normalised),
                       untimed_calls=self.warm_calls * len(self.blocks))


def round_calibration(edges_ms: Sequence[float], window: int = CALIBRATION_WINDOW) -> list[float]:
    """The calibration time of each round: the geometric mean of the calibration calls at its two edges, then the
    median over the round and `window` rounds either side. One call's own noise (a few %) is larger than the
    machine's drift over a few rounds (seconds); the median of several keeps the drift and drops the noise."""
    edges = np.asarray(edges_ms, dtype=float)
    rounds = np.sqrt(edges[:-1] * edges[1:])
    return [float(np.median(rounds[max(0, r - window):r + window + 1])) for r in range(len(rounds))]


def _warm_up(fn: Callable[[], object], device: torch.device, seconds: float) -> tuple[int, float]:
    """At least two calls and `seconds`: returns the calls and the seconds per call."""
    start, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    _synchronize(device)
    return calls, max((time.perf_counter() - start) / calls, 1e-9)


def _warmed_up_variant(fn: Callable[[], object], device: torch.device, threads: int, warmup_s: float,
                       min_block_s: float, calibration: Calibration | None) -> _Variant:
    cold_s = time_calls(fn, 1, device)
    first = (str(device), threads) not in _warmed_up
    warmup_calls, per_call = _warm_up(fn, device, max(warmup_s, FIRST_WARMUP_S) if first else warmup_s)
    _warmed_up.add((str(device), threads))
    warm_calls = 1 if calibration is not None and per_call < WARM_CALL_BELOW_S else 0
    return _Variant(fn, cold_s, warmup_calls, max(1, math.ceil(min_block_s / per_call)), warm_calls)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free interval of the median: the order statistics that bracket it with at least
    `confidence` (binomial; (min, max) below 6 values). Deterministic, no resampling."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    k = max(1, int(scipy_stats.binom.ppf((1 - confidence) / 2, n, 0.5)))
    return float(x[k - 1]), float(x[n - k])


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
