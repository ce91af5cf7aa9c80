"""oneDNN primitives for the inference path on CPU (fp32, and bf16 autocast where the CPU has native bf16):
weights reordered once into oneDNN's blocked layout (cached beside the folded constants) and the
elementwise work fused into the GEMMs as post-ops.

`F.conv2d` and `addmm` on plain weights reorder (or pack) every weight on every call: at batch 1 that is a
large part of a 1x1 conv's time when the tokens are few (49 tokens x 512 channels reads each weight
element twice per call, once to pack it). ONNX Runtime and OpenVINO prepack once at load; these are
PyTorch's own prepacked oneDNN operators (`torch.ops.mkldnn`, those Inductor's CPU freezing passes emit),
called eagerly. Fusions: GELU into fc1 (no pass over the hidden activations), and each residual add
into the conv that produces it (in place on the channels_last stream, or a GEMM's binary post-op on
its token view). Under bf16 autocast the GEMMs take bf16 inputs and packed bf16 weights while the
residual stream stays fp32 as in the reference; oneDNN's post-op adds need one dtype for both operands,
so there the residual adds run as separate in-place adds.

Used only on CPU and outside torch.compile (the packed weights are opaque oneDNN tensors that a
compiled graph does not take); everything else runs the plain path of container.fast.infer.
"""
from __future__ import annotations

import torch

from container.fast.precision import native_low_precision

_mkldnn = torch.ops.mkldnn
_AVAILABLE = torch.backends.mkldnn.is_available()


def usable(x: torch.Tensor, lowp: torch.dtype | None) -> bool:
    """Whether the inference path runs on these primitives for input `x` with GEMMs in `lowp` (None: x's
    dtype): fp32 on CPU, with fp32 GEMMs or bf16 ones on a CPU with native bf16 (see the module docstring)."""
    return (not torch.compiler.is_compiling() and _AVAILABLE and x.device.type == "cpu"
            and x.dtype == torch.float32
            and (lowp is None or (lowp == torch.bfloat16 and native_low_precision(x.device, lowp))))


def _packed(cache: dict[tuple, torch.Tensor], w: torch.Tensor, layout: str, shape: tuple[int, ...], padding: int,
            stride: int, groups: int) -> torch.Tensor:
    """`w` reordered for a conv on inputs of `shape` or for a linear layer on `shape[0]` rows; cached in `cache`
    (the `prepacked` of the folded constants that hold w, so a parameter change drops it with them; the key's
    id(w) cannot be reused while w, held by those constants, lives)."""
    key = (id(w), layout, shape)
    packed = cache.get(key)
    if packed is None:
        if layout == "linear":
            packed = _mkldnn._reorder_linear_weight(w.view(w.shape[0], -1), shape[0])
        else:
            packed = _mkldnn._reorder_convolution_weight(w, [padding] * 2, [stride] * 2, [1, 1], groups, list(shape))
        cache[key] = packed
    return packed


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cache: dict[tuple, torch.Tensor], *,
         padding: int = 0, stride: int = 1, groups: int = 1, gelu: bool = False) -> torch.Tensor:
    """conv2d(x, weight, bias) on channels_last x, GELU (exact, erf) fused when `gelu`; the weight prepacked
    into `cache`."""
    w = _packed(cache, weight, "conv", tuple(x.shape), padding, stride, groups)
    return _mkldnn._convolution_pointwise(x, w, bias, [padding] * 2, [stride] * 2, [1, 1], groups,
                                          "gelu" if gelu else "none", [], "none" if gelu else "")


def conv_add_(u: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              cache: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """u += conv2d(x, weight, bias) for a 1x1 conv, in place on channels_last u (a sum post-op)."""
    w = _packed(cache, weight, "conv", tuple(x.shape), 0, 1, 1)
    return _mkldnn._convolution_pointwise_.binary(u, x, w, bias, [0, 0], [1, 1], [1, 1], 1, "add", 1.0,
                                                  None, [], None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, cache: dict[tuple, torch.Tensor], *,
           gelu: bool = False) -> torch.Tensor:
    """A 1x1 conv as a GEMM on the (tokens, C) view x: (tokens, C_out), GELU fused when `gelu`."""
    w = _packed(cache, weight, "linear", tuple(x.shape), 0, 1, 1)
    return _mkldnn._linear_pointwise(x, w, bias, "gelu" if gelu else "none", [], "none" if gelu else "")


def linear_add(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               cache: dict[tuple, torch.Tensor]) -> torch.Tensor:
    """other + x @ weight^T + bias on (tokens, C) views: a new tensor (the binary post-op is out of place)."""
    w = _packed(cache, weight, "linear", tuple(x.shape), 0, 1, 1)
    return _mkldnn._linear_pointwise.binary(x, other, w, bias, "add")


__all__ = ["conv", "conv_add_", "linear", "linear_add", "usable"]
