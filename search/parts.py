"""The parts a network is made of, as the latency predictor's table measures them.

A part is one block at its shape (kind, dim, heads, kernel, MLP ratio, tokens per side), one patch
embedding (in/out channels, patch size, input side) or the classifier head. Fields a part's cost
cannot depend on are normalised away (the kernel of an attention block, the heads of a conv block),
so the table stays small (~300 entries for the default space).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch.nn as nn

import bench
from container import NetworkConfig
from container.kinds import block_kind
from container.networks import PatchEmbed

from search.latency import Deployment


@dataclass(frozen=True)
class Part:
    """One measured piece of a network at its shape. `side`: tokens per side of its output (an
    embedding's input side is `side * patch_size`)."""

    part: str  # "block", "embed" or "head"
    dim: int
    side: int
    kind: str = ""
    heads: int = 0
    kernel_size: int = 0
    mlp_ratio: float = 0.0
    mixing: str = ""
    in_chans: int = 0
    patch_size: int = 0
    num_classes: int = 0

    @classmethod
    def block(cls, kind: str, dim: int, heads: int, kernel_size: int, mlp_ratio: float, side: int,
              mixing: str) -> "Part":
        k = block_kind(kind)
        return cls("block", dim, side, kind=kind,
                   heads=heads if (k.dynamic or k.static == "mhmlp") else 0,  # conv / mlp blocks: no heads
                   kernel_size=kernel_size if k.static == "conv" else 0,  # only a depthwise conv has a kernel
                   mlp_ratio=float(mlp_ratio), mixing=mixing if k.mixed else "")

    def label(self) -> str:
        if self.part == "block":
            extra = (f"/h{self.heads}" if self.heads else "") + (f"/k{self.kernel_size}" if self.kernel_size else "")
            mixing = f"/{self.mixing}" if self.mixing else ""
            return f"block:{self.kind}@{self.dim}x{self.side}{extra}/r{self.mlp_ratio:g}{mixing}"
        if self.part == "embed":
            return f"embed:{self.in_chans}->{self.dim}/p{self.patch_size}@{self.side * self.patch_size}"
        return f"head:{self.dim}x{self.side}->{self.num_classes}"

    def key(self, deployment: Deployment) -> str:
        """The table key: the part at the deployment setting, runtime included (a part timed on one
        runtime is never used for another)."""
        d = deployment
        return f"{self.label()}|b{d.batch_size}|{d.dtype}|t{d.threads}|{d.device}|{d.runtime}"

    def measured_at(self, deployment: Deployment) -> Deployment:
        """The setting this part is timed at: the deployment's, except that container.optimize takes whole
        blocks and networks only, so on the fast runtime an embedding or the head is timed as its eager
        module (the conv + LayerNorm, the pool + linear the fast network also runs; the calibration absorbs
        the rest). Its table key still names the deployment's runtime."""
        if self.part != "block" and deployment.runtime == "fast":
            return replace(deployment, runtime="reference")
        return deployment

    def target(self) -> Any:
        if self.part == "block":
            return bench.BlockTarget(self.kind, self.dim, self.side, heads=self.heads or 1,
                                     kernel_size=self.kernel_size or 3, mlp_ratio=self.mlp_ratio,
                                     mixing=self.mixing or "tied")
        if self.part == "embed":
            side_in = self.side * self.patch_size
            return bench.ModuleTarget(PatchEmbed(self.in_chans, self.dim, self.patch_size),
                                      (self.in_chans, side_in, side_in), self.label())
        return bench.ModuleTarget(_Head(self.dim, self.num_classes), (self.dim, self.side, self.side), self.label())


class _Head(nn.Module):
    """ContainerNet's classifier: BatchNorm, global average pool, Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(x).flatten(2).mean(-1))


def network_parts(config: NetworkConfig) -> list[tuple[Part, int]]:
    """The parts of a network with how many times each occurs, in order."""
    out: list[tuple[Part, int]] = []
    in_chans, side = config.in_chans, config.image_size
    for stage in config.stages:
        side //= stage.patch_size
        out.append((Part("embed", stage.dim, side, in_chans=in_chans, patch_size=stage.patch_size), 1))
        out.append((Part.block(stage.kind, stage.dim, stage.heads, stage.kernel_size, stage.mlp_ratio, side,
                               config.mixing), stage.depth))
        in_chans = stage.dim
    out.append((Part("head", in_chans, side, num_classes=config.num_classes), 1))
    return out


__all__ = ["Part", "network_parts"]
