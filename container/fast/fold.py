"""Folding a block into inference constants (BatchNorm into the next 1x1 conv, the residual into
pos_embed's centre tap, beta into the static kernel), and the cache that rebuilds them when a
parameter, a BatchNorm statistic, the dtype or the device changes."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from container.affinity import DepthwiseConv, TokenMixing
from container.blocks import ContainerBlock
from container.fast.precision import attention_dtype


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = s * x + t (float64)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - bn.running_mean.double() * s


# The folded constants. Built once per cache fill and read by attribute on every call (slots: no per-call
# construction, no key strings). `prepacked` holds oneDNN's reordered weights (container.fast.onednn), filled
# on first use and dropped with the constants that own it.

@dataclass(frozen=True, slots=True, eq=False)
class DepthwiseConstants:
    """The static depthwise conv with beta folded in: conv2d(v, weight, bias, padding=padding, groups=C)."""
    weight: torch.Tensor  # (C, 1, k, k)
    bias: torch.Tensor    # (C,)
    padding: int


@dataclass(frozen=True, slots=True, eq=False)
class TokenMixingConstants:
    """Dense token mixing with beta folded in: per group g of the channels, weight[g] @ v_g + bias[g]."""
    weight: torch.Tensor  # (G, N, N)
    bias: torch.Tensor    # (G, N)
    tokens: tuple[int, int]
    groups: int


@dataclass(frozen=True, slots=True, eq=False)
class BlockConstants:
    """One block's inference constants: pos_embed with the residual in its centre tap, the 1x1 convs (w1/b1:
    conv1 with norm1 folded in, w2/b2: conv2, wf1/bf1: mlp.fc1 with norm2 folded in, wf2/bf2: mlp.fc2) as
    (C_out, C_in, 1, 1) weights, and the static affinity (None for attention alone)."""
    dim: int
    heads: int
    alpha: float  # the attention branch's mixing weight (1.0 unless the kind mixes)
    attention_dtype: torch.dtype
    pos_w: torch.Tensor
    pos_b: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    wf1: torch.Tensor
    bf1: torch.Tensor
    wf2: torch.Tensor
    bf2: torch.Tensor
    static: DepthwiseConstants | TokenMixingConstants | None
    prepacked: dict[tuple, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class PatchEmbedConstants:
    """A patch embedding: the strided conv's weight and bias (in the GEMM dtype), then its channel LayerNorm."""
    weight: torch.Tensor
    bias: torch.Tensor
    stride: int
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    eps: float
    prepacked: dict[tuple, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class NetConstants:
    """A network's: per stage its patch embedding and blocks, then the head with the final norm folded in."""
    stages: list[tuple[PatchEmbedConstants, list[BlockConstants]]]
    head_wt: torch.Tensor  # (C, classes): the head's weight, transposed
    head_b: torch.Tensor


def fold_block(block: ContainerBlock, dtype: torch.dtype, gemm_dtype: torch.dtype) -> BlockConstants:
    """The inference constants of one block, computed in float64 and rounded once.

    pos_embed's depthwise kernel, which carries the residual identity in its centre tap, is in `dtype`
    (the residual stream's); everything that reads conv1's output (the static depthwise conv scaled by
    beta, the dense token-mixing matrices) and the 1x1 conv weights and biases are in `gemm_dtype`, as
    autocast runs those convs in the reference.
    """
    pos_w = block.pos_embed.weight.double().clone()
    pos_w[:, 0, 1, 1] += 1.0  # x + dw3x3(x) == dw3x3 with 1 added to the centre tap
    pos_b = block.pos_embed.bias.double()

    s1, t1 = bn_affine(block.norm1)
    w1 = block.conv1.weight.double()[:, :, 0, 0]
    b1 = block.conv1.bias.double() + w1 @ t1  # conv1(s1 * x + t1)
    w1 = w1 * s1
    w2 = block.conv2.weight.double()[:, :, 0, 0]
    b2 = block.conv2.bias.double()
    s2, t2 = bn_affine(block.norm2)
    wf1 = block.mlp.fc1.weight.double()[:, :, 0, 0]
    bf1 = block.mlp.fc1.bias.double() + wf1 @ t2
    wf1 = wf1 * s2
    wf2 = block.mlp.fc2.weight.double()[:, :, 0, 0]
    bf2 = block.mlp.fc2.bias.double()

    def cast(t: torch.Tensor, to: torch.dtype) -> torch.Tensor:
        return t.to(to).contiguous()

    def weight1x1(w: torch.Tensor) -> torch.Tensor:
        return cast(w[:, :, None, None], gemm_dtype)

    alpha = 1.0
    static: DepthwiseConstants | TokenMixingConstants | None = None
    affinity = block.static_affinity
    if affinity is not None:
        beta = torch.ones((), dtype=torch.float64)
        if block.kind.mixed:
            a, beta = block.mix_weights()
            alpha, beta = float(a.double().item()), beta.double()
        sw = cast(affinity.weight.double() * beta, gemm_dtype)
        sb = cast(affinity.bias.double() * beta, gemm_dtype)
        if isinstance(affinity, DepthwiseConv):
            static = DepthwiseConstants(sw, sb, affinity.padding[0])
        else:
            assert isinstance(affinity, TokenMixing)
            static = TokenMixingConstants(sw, sb, tuple(affinity.tokens), affinity.heads)
    return BlockConstants(
        dim=block.dim, heads=block.heads, alpha=alpha,
        attention_dtype=attention_dtype(block.conv1.weight.device, gemm_dtype),
        pos_w=cast(pos_w, dtype), pos_b=cast(pos_b, dtype),
        w1=weight1x1(w1), b1=cast(b1, gemm_dtype), w2=weight1x1(w2), b2=cast(b2, gemm_dtype),
        wf1=weight1x1(wf1), bf1=cast(bf1, gemm_dtype), wf2=weight1x1(wf2), bf2=cast(bf2, gemm_dtype),
        static=static)


# Which tensors a module holds changes only by registering a parameter, buffer or submodule (assignment
# goes through those too) or by Module._apply (.to(), .float(), ...: it swaps parameters' data and
# replaces buffers without registering); registration hooks and the fast modules' _apply bump this
# counter, so a Folding gathers its source tensors again only then, not on every call: walking a
# network's modules for its 440 tensors took 0.8 ms a Container-Light call, a third of a 512@7 block.
#
# The hooks are torch's global ones, but scoped: installed when the first fast module is built (`watch`),
# bumping only for registrations on a module of a watched tree (a module registered into one joins it with
# its subtree), and removed when the last fast module is gone. Importing container installs nothing.
_structure = [0]
_watched: dict[int, weakref.ref] = {}  # id(module) -> a weak reference whose callback drops the entry
_owners = [0]  # live fast modules (each holds a Folding)
_handles: list[RemovableHandle] = []


def structure_changed(*_: Any) -> None:
    """Bump the module-structure generation."""
    _structure[0] += 1


def _watch_tree(module: nn.Module) -> None:
    """Watch `module` and its submodules (by identity: modules need not be hashable)."""
    stack = [module]
    while stack:
        m = stack.pop()
        key = id(m)
        if key not in _watched:
            _watched[key] = weakref.ref(m, lambda _, key=key: _watched.pop(key, None))
        stack.extend(c for c in m._modules.values() if c is not None)


def _registered(module: nn.Module, name: str, value: Any) -> None:
    """The registration hook: bump the generation for a registration on a watched module (returns None: the
    registered value is unchanged)."""
    if id(module) in _watched:
        _structure[0] += 1
        if isinstance(value, nn.Module):
            _watch_tree(value)


def _release() -> None:
    """A fast module was collected: with none left, remove the hooks (the process is as before the first)."""
    _owners[0] -= 1
    if _owners[0] == 0:
        while _handles:
            _handles.pop().remove()
        _watched.clear()


def watch(owner: nn.Module) -> None:
    """Have registrations on `owner`'s tree (now or later) refold its constants, while `owner` lives."""
    _owners[0] += 1  # first: a collection in between cannot remove the hooks under us
    weakref.finalize(owner, _release).atexit = False
    if not _handles:
        _handles.extend(register(_registered) for register in (
            nn.modules.module.register_module_parameter_registration_hook,
            nn.modules.module.register_module_buffer_registration_hook,
            nn.modules.module.register_module_module_registration_hook))
    _watch_tree(owner)
    structure_changed()


def version_key(tensors: list[torch.Tensor], inference: list[bool]) -> tuple:
    """What identifies the tensors' contents: each one's version counter and storage (a swapped .data, e.g. by
    .to(), has new storage). Inference tensors (made under torch.inference_mode) have no version counter:
    for those only replacing the tensor is noticed, and in-place changes need `refresh()`."""
    return tuple((-1 if inf else t._version, t.data_ptr()) for t, inf in zip(tensors, inference))


class Folding:
    """Cache of folded constants, rebuilt when any source tensor changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.consts: dict[Any, Any] = {}
        self.structure = -1
        self.sources: list[torch.Tensor] = []
        self.inference: list[bool] = []

    def clear(self) -> None:
        self.key, self.consts, self.structure = None, {}, -1

    # Derived data, some of it opaque (oneDNN's packed weights): a copy or an unpickled module folds again.
    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def get(self, owner: nn.Module, mode: Any, build: Callable[[], Any]) -> Any:
        if self.structure != _structure[0]:
            self.sources = list(owner.parameters()) + list(owner.buffers())
            self.inference = [t.is_inference() for t in self.sources]
            self.structure, self.key = _structure[0], None
        key = version_key(self.sources, self.inference)
        if key != self.key:
            self.key, self.consts = key, {}
        if mode not in self.consts:
            device = self.sources[0].device.type
            # inference_mode(False) first: it turns grad mode back on, and the constants must hold no graph
            with torch.inference_mode(False), torch.no_grad(), torch.autocast(device, enabled=False):
                self.consts[mode] = build()
        return self.consts[mode]
