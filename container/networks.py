"""Container networks built from a NetworkConfig, and a registry of named architectures.

State-dict keys follow the published Container-Light code (patch_embed{i}, blocks{i}.{j}, norm,
head), so its checkpoints load with strict=True.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from container.blocks import ContainerBlock
from container.config import NetworkConfig, StageConfig, as_config


class PatchEmbed(nn.Module):
    """Conv with kernel = stride = patch size, then LayerNorm over channels."""

    def __init__(self, in_chans: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        # As published: normalise token-major, then back to a contiguous NCHW map.
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class ContainerNet(nn.Module):
    def __init__(self, config: NetworkConfig | Mapping[str, Any] | str):
        super().__init__()
        self.config = config = as_config(config)
        total_depth = sum(s.depth for s in config.stages)
        drop_rates = torch.linspace(0, config.drop_path_rate, total_depth).tolist()
        in_chans, side, index = config.in_chans, config.image_size, 0
        for i, stage in enumerate(config.stages, start=1):
            side //= stage.patch_size
            self.add_module(f"patch_embed{i}", PatchEmbed(in_chans, stage.dim, stage.patch_size))
            blocks = []
            for _ in range(stage.depth):
                blocks.append(ContainerBlock(stage.dim, stage.heads, stage.kind, stage.kernel_size,
                                             stage.mlp_ratio, tokens=(side, side), mixing=config.mixing,
                                             drop_path=drop_rates[index]))
                index += 1
            self.add_module(f"blocks{i}", nn.ModuleList(blocks))
            in_chans = stage.dim
        self.norm = nn.BatchNorm2d(in_chans)
        self.head = nn.Linear(in_chans, config.num_classes)
        self.apply(_init_weights)

    def stages(self) -> list[tuple[PatchEmbed, nn.ModuleList]]:
        return [(getattr(self, f"patch_embed{i}"), getattr(self, f"blocks{i}"))
                for i in range(1, len(self.config.stages) + 1)]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.config.total_stride
        if x.ndim != 4 or x.shape[1] != self.config.in_chans or x.shape[-1] % stride or x.shape[-2] % stride:
            raise ValueError(f"input shape {tuple(x.shape)}: expected (B, {self.config.in_chans}, H, W) "
                             f"with H and W divisible by the total patch stride {stride}")
        for patch_embed, blocks in self.stages():
            x = patch_embed(x)
            for block in blocks:
                x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).flatten(2).mean(-1))


def _init_weights(m: nn.Module) -> None:
    # The published initialisation: truncated-normal Linear layers, unit LayerNorms.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build(config: NetworkConfig | Mapping[str, Any] | str) -> ContainerNet:
    """Any network from a config, a plain dict (e.g. a loaded best.json) or a JSON string."""
    return ContainerNet(config)


# --- named architectures --------------------------------------------------------------------

_MODEL_CONFIGS: dict[str, Callable[..., NetworkConfig]] = {}


def register_model(fn: Callable[..., NetworkConfig]) -> Callable[..., NetworkConfig]:
    _MODEL_CONFIGS[fn.__name__.removesuffix("_config")] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODEL_CONFIGS)


def model_config(name: str, **overrides: Any) -> NetworkConfig:
    """The config of a named architecture, with top-level fields overridden."""
    try:
        return _MODEL_CONFIGS[name](**overrides)
    except KeyError:
        raise ValueError(f"model={name!r}: unknown network; valid networks: {', '.join(list_models())}") from None


def create_model(name: str, **overrides: Any) -> ContainerNet:
    return build(model_config(name, **overrides))


def _four_stages(kinds: tuple[str, ...], **overrides: Any) -> NetworkConfig:
    dims, depths, ratios, patches = (64, 128, 320, 512), (3, 4, 8, 3), (8, 8, 4, 4), (4, 2, 2, 2)
    stages = tuple(StageConfig(depth=d, dim=c, heads=c // 32, kind=k, kernel_size=5, mlp_ratio=r, patch_size=p)
                   for d, c, k, r, p in zip(depths, dims, kinds, ratios, patches))
    return NetworkConfig(stages=stages, **overrides)


@register_model
def container_light_config(**overrides: Any) -> NetworkConfig:
    """Container-Light as published: conv blocks in stages 1-3, MixBlocks (head_dim 32) in stage 4."""
    return _four_stages(("conv", "conv", "conv", "mix"), **overrides)


@register_model
def container_config(**overrides: Any) -> NetworkConfig:
    """Container: the seed's MixBlock in every stage, head_dim 32."""
    return _four_stages(("mix",) * 4, **overrides)


def container_light(**overrides: Any) -> ContainerNet:
    return build(container_light_config(**overrides))


def container(**overrides: Any) -> ContainerNet:
    return build(container_config(**overrides))
