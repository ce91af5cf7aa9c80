"""The affinity operators of the Container paper, each able to hand back its N x N matrices.

Token mixing is Y_m = A_m V_m (+ a bias for the static operators) per head m, with N = H * W
tokens in row-major order and A[n, n'] the weight with which source token n' reaches target n.
`forward` computes the mixing the fast way (softmax-matmul, conv, einsum); `matrices` builds the
same A explicitly so that tests can check one against the other.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, heads, N, C // heads): each head owns a contiguous group of channels."""
    b, c, h, w = t.shape
    return t.reshape(b, heads, c // heads, h * w).transpose(-1, -2)


def merge_heads(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, heads, N, d) -> (B, heads * d, H, W), the inverse of split_heads."""
    b, heads, _, d = t.shape
    return t.transpose(-1, -2).reshape(b, heads * d, height, width)


class SelfAttention(nn.Module):
    """Dynamic affinity A_m = softmax(Q_m K_m^T / sqrt(d)); parameter-free, Q, K, V come from conv1."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5

    def matrices(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, N) attention matrices for q, k of shape (B, C, H, W)."""
        q, k = split_heads(q, self.heads), split_heads(k, self.heads)
        return ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = self.matrices(q, k) @ split_heads(v, self.heads)
        return merge_heads(out, v.shape[-2], v.shape[-1])


class DepthwiseConv(nn.Conv2d):
    """Static, local affinity: a k x k depthwise conv, i.e. one banded N x N matrix per channel."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def matrices(self, height: int, width: int) -> torch.Tensor:
        """(C, N, N): the zero-padded, banded matrix of each channel's kernel."""
        k = self.kernel_size[0]
        pad = k // 2
        w = self.weight[:, 0]  # (C, k, k)
        a = w.new_zeros(w.shape[0], height * width, height * width)
        for i in range(k):
            for j in range(k):
                # Output (y, x) reads input (y + i - pad, x + j - pad): a shifted identity per axis,
                # whose zero rows at the border are exactly the conv's zero padding.
                shift = torch.kron(_shift_matrix(height, i - pad), _shift_matrix(width, j - pad)).to(w)
                a = a + w[:, i, j, None, None] * shift
        return a


def _shift_matrix(n: int, offset: int) -> torch.Tensor:
    """(n, n) with ones at [i, i + offset]: reading the neighbour `offset` steps away, zero off the edge."""
    if abs(offset) >= n:
        return torch.zeros(n, n)
    return torch.diag(torch.ones(n - abs(offset)), offset)


class TokenMixing(nn.Module):
    """Static, dense affinity: a learned N x N matrix per head (MLP-Mixer when heads == 1).

    The weight fixes the token grid, so the block is built for one input resolution.
    """

    def __init__(self, dim: int, tokens: tuple[int, int], heads: int = 1):
        super().__init__()
        self.heads = heads
        self.tokens = tuple(tokens)
        n = self.tokens[0] * self.tokens[1]
        self.weight = nn.Parameter(torch.empty(heads, n, n))
        self.bias = nn.Parameter(torch.empty(heads, n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default initialisation, token-wise, as in MLP-Mixer.
        bound = 1 / math.sqrt(self.weight.shape[-1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def check_tokens(self, height: int, width: int) -> None:
        if (height, width) != self.tokens:
            raise ValueError(
                f"input tokens {height}x{width}: this dense token-mixing affinity was built for "
                f"{self.tokens[0]}x{self.tokens[1]} (set the config's image_size to match)")

    def matrices(self, height: int, width: int) -> torch.Tensor:
        """(heads, N, N)."""
        self.check_tokens(height, width)
        return self.weight

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        b, c, h, w = v.shape
        self.check_tokens(h, w)
        grouped = v.reshape(b, self.heads, c // self.heads, h * w)
        out = torch.einsum("gnm,bgcm->bgcn", self.weight, grouped) + self.bias[None, :, None, :]
        return out.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, tokens={self.tokens}"


def make_static_affinity(kind: str, dim: int, heads: int, kernel_size: int,
                         tokens: tuple[int, int] | None) -> nn.Module:
    if kind == "conv":
        return DepthwiseConv(dim, kernel_size)
    if tokens is None:
        raise ValueError(f"tokens=None: a dense {kind!r} affinity needs the token grid (H, W) at build time")
    return TokenMixing(dim, tokens, heads=1 if kind == "mlp" else heads)


def expand_to_channels(a: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., G, N, N) per group -> (..., C, N, N) per channel, each group owning C // G channels."""
    return a.repeat_interleave(channels // a.shape[-3], dim=-3)


def apply_channel_affinity(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Y[b, c] = A[b, c] @ V[b, c] with V as (B, C, H, W) and A as (B or 1, C, N, N)."""
    b, c, h, w = v.shape
    return torch.einsum("bcnm,bcm->bcn", a.expand(b, -1, -1, -1), v.reshape(b, c, h * w)).reshape(b, c, h, w)


__all__ = ["SelfAttention", "DepthwiseConv", "TokenMixing", "make_static_affinity",
           "expand_to_channels", "apply_channel_affinity", "split_heads", "merge_heads"]
