"""Which dtype each part of the inference path computes in under autocast (`autocast_policy`), and
the dtype fused attention runs in (`attention_dtype`), from what the device computes fast."""
from __future__ import annotations

import functools

import torch

AUTOCAST_POLICIES = ("auto", "follow", "fp32")


@functools.cache  # asked on every inference call under autocast; the hardware does not change
def native_low_precision(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this device has fast `dtype` GEMMs (CUDA; CPUs with AVX512-BF16/AMX/AVX512-FP16)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


def inference_precision(x: torch.Tensor, policy: str) -> tuple[bool, torch.dtype | None]:
    """(is autocast on, the low-precision dtype the inference path should compute its GEMMs in)."""
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return False, None
    dtype = torch.get_autocast_dtype(device)
    if policy == "fp32" or (policy == "auto" and not native_low_precision(x.device, dtype)):
        return True, None
    return True, dtype


def attention_dtype(device: torch.device, gemm_dtype: torch.dtype) -> torch.dtype:
    """The dtype fused attention runs in when the GEMMs run in `gemm_dtype`.

    torch's CPU flash-attention kernel is fast in bf16/fp16 only through AMX tiles; without them
    it converts each tile and runs slower than in fp32 (AVX512-BF16 EPYC, head_dim 32, the four
    stage shapes: 8-26% slower), so there attention stays in fp32, which is also more accurate."""
    if device.type == "cpu" and gemm_dtype in (torch.bfloat16, torch.float16) \
            and not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return torch.float32
    return gemm_dtype
