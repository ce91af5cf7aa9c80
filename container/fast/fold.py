"""Folding a block into inference constants (BatchNorm into the next 1x1 conv, the residual into
pos_embed's centre tap, beta into the static kernel), and the cache that rebuilds them when a
parameter, a BatchNorm statistic, the dtype or the device changes."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from container.affinity import DepthwiseConv, TokenMixing
from container.blocks import ContainerBlock
from container.fast.precision import attention_dtype


def bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = s * x + t (float64)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - bn.running_mean.double() * s


def fold_block(block: ContainerBlock, dtype: torch.dtype, gemm_dtype: torch.dtype) -> dict[str, Any]:
    """The inference constants of one block, computed in float64 and rounded once.

    pos_embed's depthwise kernel, which carries the residual identity in its centre tap, is in `dtype`
    (the residual stream's); everything that reads conv1's output (the static depthwise conv scaled by
    beta, the dense token-mixing matrices) and the 1x1 conv weights and biases are in `gemm_dtype`, as
    autocast runs those convs in the reference.
    """
    kind = block.kind
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

    out: dict[str, Any] = {
        "dim": block.dim, "heads": block.heads, "static": kind.static, "alpha": 1.0,
        "attention_dtype": attention_dtype(block.conv1.weight.device, gemm_dtype),
        "pos_w": cast(pos_w, dtype), "pos_b": cast(pos_b, dtype),
        "w1": weight1x1(w1), "b1": cast(b1, gemm_dtype), "w2": weight1x1(w2), "b2": cast(b2, gemm_dtype),
        "wf1": weight1x1(wf1), "bf1": cast(bf1, gemm_dtype), "wf2": weight1x1(wf2), "bf2": cast(bf2, gemm_dtype),
    }
    static = block.static_affinity
    if static is not None:
        beta = torch.ones((), dtype=torch.float64)
        if kind.mixed:
            alpha, beta = block.mix_weights()
            out["alpha"], beta = float(alpha.double().item()), beta.double()
        if isinstance(static, DepthwiseConv):
            out["sw"] = cast(static.weight.double() * beta, gemm_dtype)
            out["sb"] = cast(static.bias.double() * beta, gemm_dtype)
            out["pad"] = static.padding[0]
        else:
            assert isinstance(static, TokenMixing)
            out["sw"] = cast(static.weight.double() * beta, gemm_dtype)  # (G, N, N)
            out["sb"] = cast(static.bias.double() * beta, gemm_dtype)    # (G, N)
            out["tokens"] = static.tokens
            out["groups"] = static.heads
    return out


# Which tensors a module holds changes only by registering a parameter, buffer or submodule (assignment
# goes through those too) or by Module._apply (.to(), .float(), ...: it swaps parameters' data and
# replaces buffers without registering); the global hooks and the fast modules' _apply bump this
# counter, so a Folding gathers its source tensors again only then, not on every call: walking a
# network's modules for its 440 tensors took 0.8 ms a Container-Light call, a third of a 512@7 block.
_structure = [0]


def structure_changed(*_: Any) -> None:
    """Bump the module-structure generation (a global registration hook; returns None: values unchanged)."""
    _structure[0] += 1


for _register in (nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook,
                  nn.modules.module.register_module_module_registration_hook):
    _register(structure_changed)


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
            with torch.no_grad(), torch.inference_mode(False), torch.autocast(device, enabled=False):
                self.consts[mode] = build()
        return self.consts[mode]
