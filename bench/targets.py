"""What can be profiled: one block at a stage shape, a whole network, or any user module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn

import container
from container import NetworkConfig, as_config

HEAD_DIM = 32
# The four Container stages: (dim, tokens per side, batch size used for block figures).
STAGE_SHAPES: tuple[tuple[int, int, int], ...] = ((64, 56, 8), (128, 28, 16), (320, 14, 32), (512, 7, 64))


class BenchInputError(ValueError):
    """Bad input to the harness: the CLIs print it on one line and exit 2."""


@dataclass(frozen=True)
class BlockTarget:
    kind: str
    dim: int
    side: int
    heads: int | None = None  # default: dim // HEAD_DIM
    kernel_size: int = 5
    mlp_ratio: float = 4.0
    mixing: str = "tied"

    def __post_init__(self) -> None:
        if self.kind not in container.BLOCK_KINDS:
            raise BenchInputError(f"kind={self.kind!r}: unknown block kind; valid kinds: "
                                  f"{', '.join(container.BLOCK_KINDS)}")

    @property
    def num_heads(self) -> int:
        return self.heads or max(1, self.dim // HEAD_DIM)

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.dim}x{self.side}"

    def build(self) -> nn.Module:
        return container.ContainerBlock(self.dim, self.num_heads, self.kind, self.kernel_size, self.mlp_ratio,
                                        tokens=(self.side, self.side), mixing=self.mixing)

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.dim, self.side, self.side)

    def columns(self) -> dict[str, Any]:
        return {"target": "block", "name": self.name, "kind": self.kind, "dim": self.dim, "side": self.side,
                "heads": self.num_heads, "head_dim": self.dim // self.num_heads, "kernel_size": self.kernel_size,
                "mlp_ratio": self.mlp_ratio, "image_size": None}


@dataclass(frozen=True)
class NetworkTarget:
    config: NetworkConfig
    label: str = "network"

    @classmethod
    def named(cls, name: str, **overrides: Any) -> "NetworkTarget":
        try:
            return cls(container.model_config(name, **overrides), name)
        except ValueError as e:
            raise BenchInputError(str(e)) from None

    @property
    def name(self) -> str:
        return self.label

    def build(self) -> nn.Module:
        return container.build(self.config)

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.config.in_chans, self.config.image_size, self.config.image_size)

    def columns(self) -> dict[str, Any]:
        kinds = "/".join(s.kind for s in self.config.stages)
        return {"target": "network", "name": self.name, "kind": kinds, "dim": self.config.stages[-1].dim,
                "side": self.config.feature_sizes()[-1], "heads": None, "head_dim": None, "kernel_size": None,
                "mlp_ratio": None, "image_size": self.config.image_size}


@dataclass(frozen=True)
class ModuleTarget:
    """Any nn.Module with the shape of one input sample, e.g. (3, 224, 224)."""

    module: nn.Module
    sample_shape: tuple[int, ...]
    label: str = "module"

    @property
    def name(self) -> str:
        return self.label

    def build(self) -> nn.Module:
        return self.module

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *self.sample_shape)

    def columns(self) -> dict[str, Any]:
        return {"target": "module", "name": self.label}


Target = BlockTarget | NetworkTarget | ModuleTarget


def as_target(obj: Any, sample_shape: tuple[int, ...] | None = None) -> Target:
    """A target from a target, a network name, a NetworkConfig / dict, or a module plus its sample shape."""
    if isinstance(obj, (BlockTarget, NetworkTarget, ModuleTarget)):
        return obj
    if isinstance(obj, str):
        return NetworkTarget.named(obj)
    if isinstance(obj, nn.Module):
        if sample_shape is None:
            raise BenchInputError("sample_shape: needed to profile a module, e.g. (3, 224, 224)")
        return ModuleTarget(obj, tuple(sample_shape), type(obj).__name__)
    if isinstance(obj, (NetworkConfig, Mapping)):
        try:
            return NetworkTarget(as_config(obj))
        except ValueError as e:
            raise BenchInputError(str(e)) from None
    raise BenchInputError(f"target: cannot profile a {type(obj).__name__}")
