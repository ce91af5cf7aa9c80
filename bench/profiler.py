"""bench.profile: one measurement, one typed result. The CLI, the search and the regression gate call it."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from bench.flops import AttentionCall, count_flops, count_training_flops
from bench.isolated import RssWorker
from bench.memory import cpu_allocator_peak, cuda_allocator_peak
from bench.options import Options
from bench.result import Bounds, FlopFigures, KernelBound, MemoryFigures, Profile, RooflinePosition, Status
from bench.roofline import Roofline, attention_kernel_ms
from bench.runtimes import ExportFailed, is_out_of_memory, tolerance
from bench.targets import Target, as_target
from bench.timing import LatencyStats, measure_latency
from bench.workload import Workload, build_reference, convert_workload


def profile(target: Any, batch_size: int = 1, options: Options = Options(), *,
            sample_shape: tuple[int, ...] | None = None, roofline: Roofline | None = None,
            rss_worker: RssWorker | None = None, flops: bool = True, memory: bool = True) -> Profile:
    """Measure `target` at `batch_size` under `options`.

    `target` is a BlockTarget, a NetworkTarget, a network name, a NetworkConfig (or its dict),
    or an nn.Module with its `sample_shape`. The row's runtime (options.runtime) is converted once,
    and its output checked against the reference module's on the same input before it is timed.
    What goes wrong with one measurement is its status rather than an exception, so a sweep goes
    on: "oom" (the batch did not fit in memory; the parts measured before are kept), "export_failed"
    (the runtime could not convert the network) and "mismatch" (its output is off the reference's by
    more than the dtype's tolerance: no latency, no memory), each with a one-line `reason`.
    The environment (machine, commit, time) is not part of it: it is the same for a whole run, and
    bench.suite adds it once.
    """
    options.validate()
    target = as_target(target, sample_shape)
    threads = options.threads or torch.get_num_threads()
    device = torch.device(options.device)
    # The parts measured so far: a part measured before the batch ran out of memory is kept.
    params: int | None = None
    flop_figures: FlopFigures | None = None
    latency: LatencyStats | None = None
    memory_figures: MemoryFigures | None = None
    convert_s, error, reason = math.nan, None, ""
    status: Status = "ok"
    try:
        reference, x = build_reference(target, batch_size, options)
        params = sum(p.numel() for p in reference.parameters())
        workload = convert_workload(reference, x, options.replace(threads=threads))
        convert_s, error = workload.convert_s, workload.max_rel_error
        if flops:
            flop_figures = _count(workload, options)
        allowed = tolerance(options.dtype)
        if error is not None and not error <= allowed:
            status, reason = "mismatch", f"max relative error {error:.2e} > {allowed:.0e} ({options.dtype} tolerance)"
        else:
            # Timing comes before memory: its cold call is the runtime's first timed call (lazy initialisation:
            # folding constants, picking kernels), so the memory measured after it is of a steady call.
            latency = measure_latency(workload.step, device=device, threads=threads, stop=options.stop,
                                      label=target.name)
            if memory or (rss_worker is not None and device.type == "cpu"):
                memory_figures = _memory(workload, target, batch_size, options, threads, memory, rss_worker)
    except ExportFailed as failure:
        status, reason = "export_failed", failure.reason
    except Exception as failure:
        if not is_out_of_memory(failure):
            raise
        status, reason = "oom", f"{type(failure).__name__}: out of memory"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result = Profile(target, options, batch_size, threads, status, params=params, flops=flop_figures,
                     latency=latency, memory=memory_figures, convert_s=convert_s, max_rel_error=error, reason=reason)
    return result if roofline is None else replace(result, bounds=_bounds(result, roofline))


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
