"""bench.profile: one measurement, one tidy row. The CLI, the search and the regression gate call it."""
from __future__ import annotations

import math
from typing import Any

import torch

from bench.env import environment
from bench.flops import AttentionCall, count_flops, count_training_flops
from bench.isolated import RssWorker
from bench.memory import cpu_allocator_peak, cuda_allocator_peak
from bench.roofline import Roofline, attention_kernel_ms
from bench.targets import Target, as_target
from bench.timing import measure_latency
from bench.workload import Options, build_workload


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def profile(target: Any, batch_size: int = 1, options: Options = Options(), *,
            sample_shape: tuple[int, ...] | None = None, roofline: Roofline | None = None,
            rss_worker: RssWorker | None = None, flops: bool = True, memory: bool = True) -> dict[str, Any]:
    """Measure `target` at `batch_size` under `options` and return one row.

    `target` is a BlockTarget, a NetworkTarget, a network name, a NetworkConfig (or its dict),
    or an nn.Module with its `sample_shape`. A batch that does not fit in memory gives a row with
    status "oom" rather than an exception, so a sweep goes on.
    """
    options.validate()
    target: Target = as_target(target, sample_shape)
    threads = options.threads or torch.get_num_threads()
    device = torch.device(options.device)
    row: dict[str, Any] = target.columns() | options.columns() | {"batch_size": batch_size, "threads": threads}
    try:
        workload = build_workload(target, batch_size, options)
        row["params"] = sum(p.numel() for p in workload.eager.parameters())
        attention_calls: tuple[AttentionCall, ...] = ()
        if flops:
            count = count_flops(workload.eager, workload.x)
            attention_calls = count.attention_calls
            row |= count.row()
            row["work_flops"] = (count_training_flops(workload.eager, workload.x) if options.mode == "train"
                                 else row["flops_2x_macs_fvcore"])
        # Timing comes first: its cold call is the module's first (lazy initialisation: compiling,
        # folding constants, picking kernels), so the memory measured after it is of a steady call.
        latency = measure_latency(workload.step, device=device, threads=threads, stop=options.stop,
                                  label=target.name)
        row |= latency.row()
        row["compile_s"] = latency.cold_ms / 1e3 if options.compile else math.nan
        if memory:
            row |= _memory_columns(workload.step, device)
        row["throughput_img_s"] = batch_size / (latency.median_ms / 1e3)
        if rss_worker is not None and device.type == "cpu":
            row |= rss_worker.measure(target, batch_size, options, threads)
        row["status"] = "ok"
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        row["status"] = "oom"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if roofline is not None:
        row |= roofline.columns() | _roofline_columns(row, roofline)
        if row["status"] == "ok" and flops and options.mode == "inference":
            row |= _kernel_bound_columns(row, attention_calls, roofline, options, threads)
    row["latency_samples_ms"] = list(latency.times_ms) if row["status"] == "ok" else []
    return row | environment(options.device, threads)


def _memory_columns(step, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return cuda_allocator_peak(step, device)
    peak = cpu_allocator_peak(step)
    return {"cpu_alloc_peak_bytes": peak.peak_bytes, "cpu_allocated_during_call_bytes": peak.allocated_bytes}


def _roofline_columns(row: dict[str, Any], roofline: Roofline) -> dict[str, Any]:
    """Achieved FLOP/s against the calibrated peak; arithmetic intensity against estimated traffic.

    Traffic is estimated from the allocator: weights and input read once, and every byte allocated
    during the call written once and read once.
    """
    if row.get("status") != "ok" or "work_flops" not in row:
        return {}
    achieved = row["work_flops"] / (row["latency_median_ms"] / 1e3)
    allocated = row.get("cpu_allocated_during_call_bytes", row.get("cuda_allocated_during_call_bytes", 0))
    traffic = 4 * row["params"] + 2 * allocated
    intensity = row["work_flops"] / traffic if traffic else math.nan
    return {"achieved_flops": achieved, "fraction_of_peak": achieved / roofline.peak_flops,
            "flop_per_byte": intensity, "roofline_bound_flops": roofline.bound(intensity)}


def _kernel_bound_columns(row: dict[str, Any], attention_calls: tuple[AttentionCall, ...], roofline: Roofline,
                          options: Options, threads: int) -> dict[str, Any]:
    """The fastest this workload could run with the kernels it calls: its fused-attention calls at the
    speed they reach alone (fp32 or the row's dtype, whichever is faster), every other FLOP at the
    GEMM peak. Without attention this is the GEMM bound itself."""
    gemm_bound_ms = row["work_flops"] / roofline.peak_flops * 1e3
    attention_ms = attention_kernel_ms(attention_calls, options.device, dict.fromkeys(("fp32", options.dtype)),
                                       threads) if attention_calls else 0.0
    other_ms = (row["work_flops"] - row["attention_flops"]) / roofline.peak_flops * 1e3
    bound_ms = attention_ms + other_ms
    return {"gemm_bound_ms": gemm_bound_ms, "attention_kernel_ms": attention_ms, "kernel_bound_ms": bound_ms,
            "fraction_of_kernel_bound": bound_ms / row["latency_median_ms"]}
