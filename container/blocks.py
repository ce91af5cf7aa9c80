"""The Container block family: one block, Y = (alpha * A_dynamic(X) + beta * A_static) V.

Parameter names follow the published checkpoints so that they load with strict=True:
the seed's MixBlock names its parameter-free attention `attn` and its depthwise conv `conv`;
Container-Light's CBlock, which has only the static branch, names that branch `attn`. The same
rule covers every kind here: the dynamic affinity, or the only affinity, is `attn`; a static
affinity beside a dynamic one is `conv`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from container.affinity import (SelfAttention, apply_channel_affinity, expand_to_channels,
                                make_static_affinity)
from container.config import StageConfig
from container.kinds import MIXING_MODES, block_kind


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class CMlp(nn.Module):
    """Channel MLP as 1x1 convs: fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ContainerBlock(nn.Module):
    """x += pos_embed(x); x += conv2(mix(conv1(norm1(x)))); x += mlp(norm2(x)).

    `kind` picks the affinities (see container.kinds.BLOCK_KINDS). Dense static kinds ("mlp",
    "mhmlp") need `tokens`, the (H, W) grid they are built for.
    """

    def __init__(self, dim: int, heads: int = 1, kind: str = "mix", kernel_size: int = 5,
                 mlp_ratio: float = 4.0, tokens: tuple[int, int] | None = None,
                 mixing: str = "tied", drop_path: float = 0.0):
        super().__init__()
        StageConfig(depth=1, dim=dim, heads=heads, kind=kind, kernel_size=kernel_size,
                    mlp_ratio=mlp_ratio).validate("block")
        if mixing not in MIXING_MODES:
            raise ValueError(f"mixing={mixing!r}: valid modes: {', '.join(MIXING_MODES)}")
        self.kind = block_kind(kind)
        self.dim, self.heads, self.mixing = dim, heads, mixing

        if self.kind.mixed:
            if mixing == "tied":
                self.sa_weight = nn.Parameter(torch.zeros(1))
            else:
                self.alpha = nn.Parameter(torch.full((1,), 0.5))
                self.beta = nn.Parameter(torch.full((1,), 0.5))
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, 3 * dim if self.kind.dynamic else dim, 1)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        static = (make_static_affinity(self.kind.static, dim, heads, kernel_size, tokens)
                  if self.kind.static else None)
        if self.kind.dynamic:
            self.attn = SelfAttention(dim, heads)
            if static is not None:
                self.conv = static
        else:
            self.attn = static
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = CMlp(dim, int(dim * mlp_ratio))

    @property
    def static_affinity(self) -> nn.Module | None:
        if not self.kind.static:
            return None
        return self.conv if self.kind.dynamic else self.attn

    def mix_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, beta) weighting the dynamic and static affinities."""
        if not self.kind.mixed:
            one = self.conv2.weight.new_ones(1)
            return (one, one.new_zeros(1)) if self.kind.dynamic else (one.new_zeros(1), one)
        if self.mixing == "tied":
            w = torch.sigmoid(self.sa_weight)
            return w, 1 - w
        return self.alpha, self.beta

    def token_mixing(self, qkv: torch.Tensor) -> torch.Tensor:
        """Mix tokens of conv1's output ([Q | K | V] for dynamic kinds, V otherwise)."""
        if not self.kind.dynamic:
            return self.attn(qkv)
        q, k, v = qkv.chunk(3, dim=1)
        sa = self.attn(q, k, v)
        if not self.kind.mixed:
            return sa
        alpha, beta = self.mix_weights()
        return alpha * sa + beta * self.conv(v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.drop_path(self.conv2(self.token_mixing(self.conv1(self.norm1(x)))))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def affinity(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The explicit affinity matrices this block applies to V for block input x.

        Returns "dynamic" (B, heads, N, N) and/or "static" (groups, N, N), the mixing weights, the
        per-channel combination "combined" = alpha * A_dynamic + beta * A_static as (B, C, N, N),
        and "qkv", conv1's output, so that callers can apply the matrices to its V.
        """
        x = x + self.pos_embed(x)
        qkv = self.conv1(self.norm1(x))
        return self.affinity_from_qkv(qkv) | {"qkv": qkv}

    def value(self, qkv: torch.Tensor) -> torch.Tensor:
        """V, the part of conv1's output that the affinities act on."""
        return qkv.chunk(3, dim=1)[2] if self.kind.dynamic else qkv

    def apply_affinity(self, qkv: torch.Tensor) -> torch.Tensor:
        """Token mixing through the explicit matrices: combined @ V + beta * static bias."""
        mats = self.affinity_from_qkv(qkv)
        v = self.value(qkv)
        out = apply_channel_affinity(mats["combined"], v)
        if self.kind.static:
            # The static operators are affine: their offset is what they map zero to.
            out = out + mats["beta"] * self.static_affinity(torch.zeros_like(v))
        return out

    def affinity_from_qkv(self, qkv: torch.Tensor) -> dict[str, torch.Tensor]:
        """The matrices for conv1's output qkv; see `affinity`."""
        h, w = qkv.shape[-2:]
        alpha, beta = self.mix_weights()
        out: dict[str, torch.Tensor] = {"alpha": alpha, "beta": beta}
        combined = 0
        if self.kind.dynamic:
            q, k, _ = qkv.chunk(3, dim=1)
            out["dynamic"] = self.attn.matrices(q, k)
            combined = alpha * expand_to_channels(out["dynamic"], self.dim)
        if self.kind.static:
            out["static"] = self.static_affinity.matrices(h, w)
            combined = combined + beta * expand_to_channels(out["static"], self.dim)[None]
        out["combined"] = combined
        return out


class MixBlock(ContainerBlock):
    """The seed's MixBlock: self-attention + 5x5 depthwise conv on V, tied by sigmoid(sa_weight)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 kernel_size: int = 5):
        super().__init__(dim, num_heads, "mix", kernel_size, mlp_ratio, drop_path=drop_path)


class CBlock(ContainerBlock):
    """Container-Light's conv-only block; its depthwise conv is named `attn`."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, kernel_size: int = 5):
        super().__init__(dim, 1, "conv", kernel_size, mlp_ratio, drop_path=drop_path)
