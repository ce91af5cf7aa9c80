"""What bench.profile measured, typed; it becomes a flat results row only when written.

A `Profile` is composed of one small dataclass per thing measured. A part is None when it was not
measured: turned off (flops=False, memory=False, no roofline), or the batch ran out of memory
before it was reached. `Profile.row()` gives the columns of results.csv / results.json, in the
order they are written.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.flops import FlopCount
from bench.isolated import RssPeak
from bench.memory import AllocatorPeak, CudaPeak
from bench.roofline import Roofline
from bench.targets import Target
from bench.timing import LatencyStats
from bench.options import Options

# ok; oom: the batch did not fit in memory; export_failed: the runtime could not convert the network;
# mismatch: the runtime's output is off the reference module's by more than the dtype's tolerance
Status = Literal["ok", "oom", "mismatch", "export_failed"]


@dataclass(frozen=True)
class FlopFigures:
    count: FlopCount  # one forward pass, by fvcore and by FlopCounterMode
    work_flops: int  # one step: 2 x fvcore MACs (inference), or forward + backward by FlopCounterMode (train)

    @property
    def macs_fvcore(self) -> int:
        return self.count.macs_fvcore

    def row(self) -> dict[str, Any]:
        return self.count.row() | {"work_flops": self.work_flops}


@dataclass(frozen=True)
class MemoryFigures:
    cpu: AllocatorPeak | None = None  # allocator-exact CPU peak of a steady call
    cuda: CudaPeak | None = None  # the CUDA caching allocator's peaks of a steady call
    rss: RssPeak | None = None  # peak resident set of the workload alone, in a worker process (CPU)

    @property
    def allocated_during_call_bytes(self) -> int:
        """Every byte allocated during the call (0 when the allocator was not watched)."""
        if self.cpu is not None:
            return self.cpu.allocated_bytes
        return self.cuda.allocated_bytes if self.cuda is not None else 0

    def allocator_row(self) -> dict[str, int]:
        row: dict[str, int] = {}
        if self.cpu is not None:
            row |= {"cpu_alloc_peak_bytes": self.cpu.peak_bytes,
                    "cpu_allocated_during_call_bytes": self.cpu.allocated_bytes}
        if self.cuda is not None:
            row |= {"cuda_peak_allocated_bytes": self.cuda.peak_allocated_bytes,
                    "cuda_peak_reserved_bytes": self.cuda.peak_reserved_bytes,
                    "cuda_allocated_during_call_bytes": self.cuda.allocated_bytes}
        return row

    def rss_row(self) -> dict[str, int]:
        if self.rss is None:
            return {}
        return {"rss_peak_bytes": self.rss.peak_bytes, "rss_before_call_bytes": self.rss.before_call_bytes,
                "rss_call_delta_bytes": self.rss.call_delta_bytes}


@dataclass(frozen=True)
class RooflinePosition:
    """Where a measurement sits under the roofline: achieved FLOP/s, and intensity against estimated traffic."""

    achieved_flops: float
    fraction_of_peak: float
    flop_per_byte: float
    roofline_bound_flops: float


@dataclass(frozen=True)
class KernelBound:
    """The fastest the workload could run with the kernels it calls (see bench.profiler.kernel_bound)."""

    gemm_bound_ms: float  # every FLOP at the GEMM peak
    attention_kernel_ms: float  # its fused-attention calls, each timed alone
    kernel_bound_ms: float  # attention at that speed, every other FLOP at the GEMM peak
    fraction_of_kernel_bound: float  # kernel_bound_ms / median latency


@dataclass(frozen=True)
class Bounds:
    roofline: Roofline  # calibrated in the same run
    position: RooflinePosition | None = None  # when the row is ok and its FLOPs were counted
    kernel: KernelBound | None = None  # the same, in inference mode

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = self.roofline.columns()
        for part in (self.position, self.kernel):
            if part is not None:
                row |= asdict(part)
        return row


@dataclass(frozen=True)
class Profile:
    """One measurement of `target` at `batch_size` under `options`."""

    target: Target
    options: Options
    batch_size: int
    threads: int
    status: Status  # see Status; "oom": the parts measured before that are kept
    params: int | None = None  # None when the workload could not even be built
    flops: FlopFigures | None = None  # always the reference module's
    latency: LatencyStats | None = None  # None unless the runtime's output passed the check
    memory: MemoryFigures | None = None
    bounds: Bounds | None = None
    convert_s: float = math.nan  # converting for the runtime (export + compile); nan: nothing to convert
    max_rel_error: float | None = None  # max |out - ref| / max |ref| against the reference module; None: not reached
    reason: str = ""  # one line saying why the status is not ok; empty when ok

    @property
    def runtime(self) -> str:
        return self.options.runtime

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def compile_s(self) -> float | None:
        """The first call with torch.compile (compiling is what it waits for): the runtime's conversion;
        nan when not compiled."""
        if self.latency is None:
            return None
        return self.convert_s if self.options.compile else math.nan

    @property
    def throughput_img_s(self) -> float | None:
        return None if self.latency is None else self.batch_size / (self.latency.median_ms / 1e3)

    def row(self) -> dict[str, Any]:
        """The flat results row, columns in the order results.csv has them (environment columns aside:
        the suite adds those once per run)."""
        row: dict[str, Any] = (self.target.columns() | self.options.columns()
                               | {"batch_size": self.batch_size, "threads": self.threads})
        if self.params is not None:
            row["params"] = self.params
        if self.flops is not None:
            row |= self.flops.row()
        row |= {"convert_s": self.convert_s, "max_rel_error": self.max_rel_error}
        if self.latency is not None:
            row |= self.latency.row() | {"compile_s": self.compile_s}
        if self.memory is not None:
            row |= self.memory.allocator_row()
        if self.latency is not None:
            row["throughput_img_s"] = self.throughput_img_s
        if self.memory is not None:
            row |= self.memory.rss_row()
        row |= {"status": self.status, "status_reason": self.reason}
        if self.bounds is not None:
            row |= self.bounds.row()
        timed = self.ok and self.latency is not None
        row["latency_samples_ms"] = list(self.latency.times_ms) if timed else []
        row["latency_rounds_norm_ms"] = list(self.latency.rounds_norm_ms) if timed else []
        return row


# List columns of a results row (per block): latency_samples.json holds them, results.csv does not.
SAMPLE_COLUMNS = ("latency_samples_ms", "latency_rounds_norm_ms")

# Columns of results rows that make two rows the same workload (runtime and dtype aside).
SAME_WORKLOAD = ["name", "batch_size", "device", "channels_last", "compile", "mode"]


def rounds_of(frame: pd.DataFrame) -> pd.Series:
    """Each row's normalised per-round times (a list; empty where the run did not keep them)."""
    if "latency_rounds_norm_ms" not in frame:
        return pd.Series([[] for _ in range(len(frame))], index=frame.index, dtype=object)
    return frame["latency_rounds_norm_ms"].map(lambda v: list(v) if isinstance(v, (list, tuple)) else [])


def ok_medians(frame: pd.DataFrame) -> pd.Series:
    """Each results row's median latency at the machine's reference speed (`latency_norm_ms`; as measured in a
    run from before normalisation), NaN where the row has no valid figure (status other than ok)."""
    median = frame["latency_median_ms"] if "latency_median_ms" in frame else pd.Series(np.nan, index=frame.index)
    if "latency_norm_ms" in frame:
        median = frame["latency_norm_ms"].fillna(median)
    status = frame["status"].fillna("ok") if "status" in frame else pd.Series("ok", index=frame.index)
    return median.where(status == "ok")

