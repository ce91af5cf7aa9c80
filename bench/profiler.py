"""bench.profile: one measurement, one typed result. The CLI, the search and the regression gate call it."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Sequence

import torch

from bench.flops import AttentionCall, count_flops, count_training_flops
from bench.isolated import RssWorker
from bench.machine import machine_calibration
from bench.memory import cpu_allocator_peak, cuda_allocator_peak
from bench.options import Options
from bench.result import Bounds, FlopFigures, KernelBound, MemoryFigures, Profile, RooflinePosition, Status
from bench.roofline import Roofline, attention_kernel_ms
from bench.runtimes import ExportFailed, is_out_of_memory, tolerance
from bench.targets import Target, as_target
from bench.timing import LatencyStats, StopRule, measure_rounds
from bench.workload import Workload, build_reference, convert_workload


def profile(target: Any, batch_size: int = 1, options: Options = Options(), *,
            sample_shape: tuple[int, ...] | None = None, roofline: Roofline | None = None,
            rss_worker: RssWorker | None = None, flops: bool = True, memory: bool = True) -> Profile:
    """Measure `target` at `batch_size` under `options`.

    `target` is a BlockTarget, a NetworkTarget, a network name, a NetworkConfig (or its dict),
    or an nn.Module with its `sample_shape`. The row's runtime (options.runtime) is converted once,
    and its output checked against the reference module's on the same input before it is timed,
    with the machine's calibration workload between its timed blocks (bench.machine): the latency
    comes as measured and at the machine's reference speed.
    What goes wrong with one measurement is its status rather than an exception, so a sweep goes
    on: "oom" (the batch did not fit in memory; the parts measured before are kept), "export_failed"
    (the runtime could not convert the network) and "mismatch" (its output is off the reference's by
    more than the dtype's tolerance: no latency, no memory), each with a one-line `reason`.
    The environment (machine, commit, time) is not part of it: it is the same for a whole run, and
    bench.suite adds it once.
    """
    return profile_variants(as_target(target, sample_shape), batch_size, [options], rooflines=[roofline],
                            rss_worker=rss_worker, flops=flops, memory=memory)[0]


def profile_variants(target: Target, batch_size: int, variants: Sequence[Options], *,
                     rooflines: Sequence[Roofline | None] | None = None, rss_worker: RssWorker | None = None,
                     rss: Sequence[bool] | None = None, flops: bool = True, memory: bool = True) -> list[Profile]:
    """`profile` of several variants of one workload (runtimes, dtypes, layouts of `target` at `batch_size`,
    all on one device and thread count), timed together in randomized interleaved rounds
    (bench.timing.measure_rounds, with variants[0]'s stop rule), so that every ratio between them is
    measured under the same conditions. `rss[i]` says whether variant i gets the isolated-process RSS."""
    variants = list(variants)
    for options in variants:
        options.validate()
    if len({(torch.device(o.device), o.threads) for o in variants}) > 1:
        raise ValueError("profile_variants: every variant runs on one device and thread count")
    rooflines = list(rooflines or [None] * len(variants))
    rss = list(rss if rss is not None else [True] * len(variants))
    threads = variants[0].threads or torch.get_num_threads()
    device = torch.device(variants[0].device)
    parts = [_Parts(options) for options in variants]
    for part in parts:
        part.prepare(target, batch_size, threads, flops)
    timed = [part for part in parts if part.status == "ok"]
    if timed:
        stats = _time_variants(timed, device, threads, target.name, variants[0].stop)
        for part, latency in zip(timed, stats):
            part.latency = latency
    results = []
    for part, roofline, with_rss in zip(parts, rooflines, rss):
        if part.latency is not None and (memory or (rss_worker is not None and with_rss)):
            part.guard(device, part.measure_memory, target, batch_size, threads, memory,
                       rss_worker if with_rss else None)
        result = part.result(target, batch_size, threads)
        results.append(result if roofline is None else replace(result, bounds=_bounds(result, roofline)))
    return results


def _time_variants(parts: list["_Parts"], device: torch.device, threads: int, label: str,
                   stop: StopRule) -> list[LatencyStats | None]:
    """Every variant's latency from one measure_rounds; out of memory while timing: each variant alone."""
    try:
        return time_steps([p.workload.step for p in parts], device=device, threads=threads, stop=stop, label=label,
                          settle_s=[p.workload.settle_s for p in parts])
    except Exception as failure:
        if not is_out_of_memory(failure):
            raise
        if len(parts) == 1:
            parts[0].out_of_memory(device, failure)
            return [None]
    stats: list[LatencyStats | None] = []
    for part in parts:
        alone = part.guard(device, time_steps, [part.workload.step], device=device, threads=threads, stop=stop,
                           label=label, settle_s=[part.workload.settle_s])
        stats.append(alone[0] if alone else None)
    return stats


def time_steps(steps: Sequence[Callable[[], object]], *, device: str | torch.device, threads: int, stop: StopRule,
               label: str = "", settle_s: Sequence[float] = ()) -> list[LatencyStats]:
    """How a row's latency is timed: the variants `steps` in bench.timing.measure_rounds with this machine's
    calibration workload between their blocks (bench.machine), so each figure also comes at the machine's
    reference speed (norm_ms, machine_speed). `settle_s[i]`: Converted.settle_s of step i."""
    calibration = machine_calibration(str(torch.device(device)), threads)
    return measure_rounds(list(steps), device=device, threads=threads, stop=stop, labels=[label] * len(steps),
                          calibration=calibration, settle_s=settle_s)


class _Parts:
    """One variant's parts, measured so far: a part measured before the batch ran out of memory is kept."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.params: int | None = None
        self.flops: FlopFigures | None = None
        self.latency: LatencyStats | None = None
        self.memory: MemoryFigures | None = None
        self.workload: Workload | None = None
        self.convert_s, self.error, self.reason = math.nan, None, ""
        self.status: Status = "ok"

    def guard(self, device: torch.device, measure: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`measure(*args, **kwargs)`, with a conversion failure or out of memory turned into this variant's
        status (None returned then)."""
        try:
            return measure(*args, **kwargs)
        except ExportFailed as failure:
            self.status, self.reason = "export_failed", failure.reason
        except Exception as failure:
            if not is_out_of_memory(failure):
                raise
            self.out_of_memory(device, failure)
        return None

    def out_of_memory(self, device: torch.device, failure: BaseException) -> None:
        self.status, self.reason = "oom", f"{type(failure).__name__}: out of memory"
        self.latency = None
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def prepare(self, target: Target, batch_size: int, threads: int, flops: bool) -> None:
        self.guard(torch.device(self.options.device), self._prepare, target, batch_size, threads, flops)

    def _prepare(self, target: Target, batch_size: int, threads: int, flops: bool) -> None:
        reference, x = build_reference(target, batch_size, self.options)
        self.params = sum(p.numel() for p in reference.parameters())
        self.workload = convert_workload(reference, x, self.options.replace(threads=threads))
        self.convert_s, self.error = self.workload.convert_s, self.workload.max_rel_error
        if flops:
            self.flops = _count(self.workload, self.options)
        allowed = tolerance(self.options.dtype)
        if self.error is not None and not self.error <= allowed:
            self.status = "mismatch"
            self.reason = f"max relative error {self.error:.2e} > {allowed:.0e} ({self.options.dtype} tolerance)"

    def measure_memory(self, target: Target, batch_size: int, threads: int, allocator: bool,
                       rss_worker: RssWorker | None) -> None:
        # After timing: the cold call was the runtime's first timed call (lazy initialisation: folding
        # constants, picking kernels), so the memory measured now is of a steady call.
        self.memory = _memory(self.workload, target, batch_size, self.options, threads, allocator, rss_worker)

    def result(self, target: Target, batch_size: int, threads: int) -> Profile:
        return Profile(target, self.options, batch_size, threads, self.status, params=self.params, flops=self.flops,
                       latency=self.latency if self.status == "ok" else None, memory=self.memory,
                       convert_s=self.convert_s, max_rel_error=self.error, reason=self.reason)


def _count(workload: Workload, options: Options) -> FlopFigures:
    """FLOPs are the reference module's whatever the runtime (the same function); the fused-attention
    kernels that the kernel bound charges are those of the torch module that runs, where there is one."""
    count = count_flops(workload.eager, workload.x)
    if workload.module is not None and workload.module is not workload.eager:
        count = replace(count, attention_calls=count_flops(workload.module, workload.x).attention_calls)
    work = (count_training_flops(workload.eager, workload.x) if options.mode == "train" else count.flops_fvcore)
    return FlopFigures(count, work)


def _memory(workload: Workload, target: Target, batch_size: int, options: Options, threads: int, allocator: bool,
            rss_worker: RssWorker | None) -> MemoryFigures:
    device = torch.device(options.device)
    cpu = cuda = rss = None
    if allocator and workload.torch_allocates:  # another runtime's allocator is not torch's to watch
        if device.type == "cuda":
            cuda = cuda_allocator_peak(workload.step, device)
        else:
            cpu = cpu_allocator_peak(workload.step)
    if rss_worker is not None and device.type == "cpu":
        rss = rss_worker.measure(target, batch_size, options, threads)
    return MemoryFigures(cpu=cpu, cuda=cuda, rss=rss)


def _bounds(result: Profile, roofline: Roofline) -> Bounds:
    if not result.ok or result.flops is None or result.latency is None:
        return Bounds(roofline)
    position = roofline_position(result.flops.work_flops, result.latency, result.params or 0,
                                 result.memory.allocated_during_call_bytes if result.memory else 0, roofline)
    kernel = None
    if result.options.mode == "inference":
        kernel = kernel_bound(result.flops, result.latency, roofline, result.options, result.threads)
    return Bounds(roofline, position, kernel)


def roofline_position(work_flops: int, latency: LatencyStats, params: int, allocated_bytes: int,
                      roofline: Roofline) -> RooflinePosition:
    """Achieved FLOP/s against the calibrated peak; arithmetic intensity against estimated traffic.

    Traffic is estimated from the allocator: weights and input read once, and every byte allocated
    during the call written once and read once.
    """
    achieved = work_flops / (latency.median_ms / 1e3)
    traffic = 4 * params + 2 * allocated_bytes
    intensity = work_flops / traffic if traffic else math.nan
    return RooflinePosition(achieved_flops=achieved, fraction_of_peak=achieved / roofline.peak_flops,
                            flop_per_byte=intensity, roofline_bound_flops=roofline.bound(intensity))


def kernel_bound(flops: FlopFigures, latency: LatencyStats, roofline: Roofline, options: Options,
                 threads: int) -> KernelBound:
    """The fastest this workload could run with the kernels it calls: its fused-attention calls at the
    speed they reach alone (fp32 or the row's dtype, whichever is faster), every other FLOP at the
    GEMM peak. Without attention this is the GEMM bound itself."""
    calls: tuple[AttentionCall, ...] = flops.count.attention_calls
    gemm_bound_ms = flops.work_flops / roofline.peak_flops * 1e3
    attention_ms = attention_kernel_ms(calls, options.device, dict.fromkeys(("fp32", options.dtype)),
                                       threads) if calls else 0.0
    other_ms = (flops.work_flops - flops.count.attention_flops) / roofline.peak_flops * 1e3
    bound_ms = attention_ms + other_ms
    return KernelBound(gemm_bound_ms=gemm_bound_ms, attention_kernel_ms=attention_ms, kernel_bound_ms=bound_ms,
                       fraction_of_kernel_bound=bound_ms / latency.median_ms)
