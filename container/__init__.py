"""The Container block family (Gao et al., NeurIPS 2021) and the networks built from it."""
from container.affinity import DepthwiseConv, SelfAttention, TokenMixing
from container.blocks import CBlock, CMlp, ContainerBlock, DropPath, MixBlock
from container.config import NetworkConfig, StageConfig, as_config
from container.fast import FastContainerBlock, FastContainerNet, optimize
from container.kinds import BLOCK_KINDS, MIXING_MODES, BlockKind, block_kind
from container.networks import (ContainerNet, PatchEmbed, build, container, container_config, container_light,
                                container_light_config, create_model, list_models, model_config)

__all__ = [
    "BLOCK_KINDS", "MIXING_MODES", "BlockKind", "CBlock", "CMlp", "ContainerBlock", "ContainerNet",
    "DepthwiseConv", "DropPath", "FastContainerBlock", "FastContainerNet", "MixBlock", "NetworkConfig",
    "PatchEmbed", "SelfAttention", "StageConfig", "TokenMixing", "as_config", "block_kind", "build",
    "container", "container_config", "container_light", "container_light_config", "create_model",
    "list_models", "model_config", "optimize",
]
