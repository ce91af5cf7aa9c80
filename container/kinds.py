"""Which affinities each named block kind combines: Y = (alpha * A_dynamic(X) + beta * A_static) V.

A kind names at most one dynamic affinity (self-attention) and at most one static affinity
(depthwise conv, MLP-Mixer token mixing, multi-head MLP). Picking the pair specialises the
Container block into each operator of the paper.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockKind:
    name: str
    dynamic: bool  # softmax self-attention over all tokens
    static: str | None  # "conv", "mlp" (one dense N x N), "mhmlp" (a dense N x N per head)
    description: str

    @property
    def mixed(self) -> bool:
        return self.dynamic and self.static is not None

    @property
    def needs_fixed_tokens(self) -> bool:
        """Dense static affinities own an N x N weight, so they fix the token grid at build time."""
        return self.static in ("mlp", "mhmlp")


BLOCK_KINDS: dict[str, BlockKind] = {k.name: k for k in (
    BlockKind("conv", False, "conv", "depthwise conv only (Container-Light's CBlock)"),
    BlockKind("attn", True, None, "multi-head self-attention only"),
    BlockKind("mlp", False, "mlp", "MLP-Mixer token mixing: one dense N x N affinity"),
    BlockKind("mhmlp", False, "mhmlp", "multi-head MLP: a dense N x N affinity per head"),
    BlockKind("mix", True, "conv", "self-attention + depthwise conv (the seed's MixBlock)"),
    BlockKind("attn_mlp", True, "mlp", "self-attention + MLP-Mixer token mixing"),
    BlockKind("attn_mhmlp", True, "mhmlp", "self-attention + multi-head MLP"),
)}

# tied: the seed's one scalar, w = sigmoid(sa_weight), mixing w and 1 - w.
# free: the paper's independent learnable alpha and beta.
MIXING_MODES = ("tied", "free")


def block_kind(name: str) -> BlockKind:
    try:
        return BLOCK_KINDS[name]
    except KeyError:
        raise ValueError(f"kind={name!r}: unknown block kind; valid kinds: {', '.join(BLOCK_KINDS)}") from None
