"""The channels_last layout both fast paths compute in: a (B, C, H, W) channels_last tensor and its
(tokens, C) token-major view are the same memory, so 1x1 convs run as GEMMs on the view without a copy."""
from __future__ import annotations

import torch


def nhwc(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels_last -> its (B*H*W, C) token-major view (no copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def nchw(t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*H*W, C) or (B, N, C) token-major -> its (B, C, H, W) channels_last view."""
    return t.reshape(b, h, w, -1).permute(0, 3, 1, 2)

