"""This machine's roofline, calibrated in the same run as the measurements it judges."""
from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
import torch.nn.functional as F

from bench.flops import AttentionCall
from bench.timing import StopRule, measure_latency

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CALIBRATION_STOP = StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.3, max_time_s=2.0)


@dataclass(frozen=True)
class Roofline:
    device: str
    dtype: str
    peak_flops: float  # best dense GEMM FLOP/s over a few square sizes, from the fastest timed block
    gemm_size: int  # the size that reached it
    bandwidth_bytes_s: float  # a large tensor copy: bytes read + bytes written per second

    def bound(self, flop_per_byte: float) -> float:
        return min(self.peak_flops, flop_per_byte * self.bandwidth_bytes_s)

    def columns(self) -> dict[str, float | int]:
        return {f"roofline_{k}": v for k, v in asdict(self).items() if k not in ("device", "dtype")}


def calibrate(device: str = "cpu", dtype: str = "fp32", threads: int | None = None,
              stop: StopRule = CALIBRATION_STOP) -> Roofline:
    dev = torch.device(device)
    torch_dtype = DTYPES[dtype]
    sizes = (1024, 2048) if dev.type == "cpu" else (4096, 8192)
    best, best_size = 0.0, sizes[0]
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(torch_dtype)
        b = torch.randn(n, n, device=dev).to(torch_dtype)
        stats = measure_latency(functools.partial(torch.mm, a, b), device=dev, threads=threads, stop=stop, label="gemm")
        # A peak is what the machine can do: interference only ever adds time, so the fastest block
        # estimates it; the median would let one busy moment pass a lower peak for the machine's.
        flops = 2 * n**3 / (stats.min_ms / 1e3)
        if flops > best:
            best, best_size = flops, n
    elements = (64 if dev.type == "cpu" else 256) * 2**20  # 256 MiB (1 GiB on GPU) of fp32
    src = torch.empty(elements, device=dev).fill_(1.0)
    dst = torch.empty_like(src)
    stats = measure_latency(lambda: dst.copy_(src), device=dev, threads=threads, stop=stop, label="copy")
    bandwidth = 2 * src.numel() * src.element_size() / (stats.min_ms / 1e3)
    return Roofline(str(dev), dtype, best, best_size, bandwidth)


def attention_kernel_ms(calls: Iterable[AttentionCall], device: str = "cpu", dtypes: Iterable[str] = ("fp32",),
                        threads: int | None = None, stop: StopRule = CALIBRATION_STOP) -> float:
    """What a workload's fused-attention calls cost when the kernel runs alone, in ms.

    Each distinct call is timed on fresh tensors of the same shapes and strides, in each of
    `dtypes`, and the fastest is kept (from its fastest timed block, as for the GEMM peak). Next to
    the GEMM peak this is the other half of a kernel-aware bound: attention at head_dim 32 runs well
    below the GEMM rate, so a block made mostly of attention cannot reach the GEMM roof.
    """
    return sum(count * min(_attention_call_ms(call, device, dtype, threads, stop) for dtype in dtypes)
               for call, count in Counter(calls).items())


@functools.lru_cache(maxsize=256)
def _attention_call_ms(call: AttentionCall, device: str, dtype: str, threads: int | None, stop: StopRule) -> float:
    q, k, v = (torch.empty_strided(shape, stride, device=device, dtype=DTYPES[dtype]).normal_()
               for shape, stride in zip(call.shapes, call.strides))
    stats = measure_latency(lambda: F.scaled_dot_product_attention(q, k, v), device=device, threads=threads,
                            stop=stop, label="attention")
    return stats.min_ms
