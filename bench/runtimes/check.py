"""The check every runtime passes before it is timed: its output against the reference module's."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

# max |out - ref| / max |ref| allowed, by the row's dtype (bf16 / fp16 through autocast round every GEMM)
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}


def tolerance(dtype: str) -> float:
    return TOLERANCE[dtype]


def reference_output(module: nn.Module, x: torch.Tensor, training: bool, autocast) -> torch.Tensor:
    """The reference module's output on `x`, in its mode, under the row's autocast (a context manager)."""
    grad = torch.no_grad() if training else torch.inference_mode()
    with grad, autocast:
        return module(x).float().clone()


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|; inf when the shapes differ or the output is not finite."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if out.shape != ref.shape:
        return math.inf
    error = float((out - ref).abs().max()) if out.numel() else 0.0
    if not math.isfinite(error):
        return math.inf
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return error / scale if scale > 0 else error
