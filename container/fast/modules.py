"""FastContainerBlock, FastContainerNet and `optimize`: modules that hold a reference's own
submodules under its names and pick the inference or the lean path per call."""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
import torch.nn as nn

from container.blocks import ContainerBlock
from container.fast.fold import (BlockConstants, Folding, NetConstants, PatchEmbedConstants, bn_affine, fold_block,
                                 structure_changed, watch)
from container.fast.infer import block_infer, net_infer
from container.fast.lean import lean_block, lean_patch_embed
from container.fast.precision import AUTOCAST_POLICIES, inference_precision
from container.networks import ContainerNet


def _adopt(target: nn.Module, source: nn.Module) -> None:
    """Give `target` the parameters, buffers and submodules of `source` under the same names."""
    for name, p in source._parameters.items():
        target.register_parameter(name, p)
    for name, buf in source._buffers.items():
        target.register_buffer(name, buf, persistent=name not in source._non_persistent_buffers_set)
    for name, child in source._modules.items():
        target.add_module(name, child)
    target.train(source.training)


class _Refolding(nn.Module):
    """A module whose folded constants follow registrations in its tree and `.to()` and friends, which replace
    buffers without registering them (container.fast.fold gathers its source tensors again only when the
    structure changes). Subclasses call `watch(self)` once built; copies and unpickled modules watch themselves."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        watch(self)

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        out = super()._apply(fn, recurse)
        structure_changed()
        return out


class FastContainerBlock(_Refolding):
    """A ContainerBlock's function through the fast paths; same parameters and state_dict keys.

    Build it with `container.optimize(block)` (or `FastContainerBlock(block)`, which shares the
    block's tensors). Inputs may be NCHW or channels_last; outputs are channels_last unless
    `channels_last=False`.
    """

    def __init__(self, block: ContainerBlock, *, channels_last: bool = True, compile: bool = False,
                 compile_options: dict[str, Any] | None = None, autocast_policy: str = "auto"):
        super().__init__()
        if not isinstance(block, ContainerBlock):
            raise TypeError(f"FastContainerBlock needs a ContainerBlock, got {type(block).__name__}")
        if autocast_policy not in AUTOCAST_POLICIES:
            raise ValueError(f"autocast_policy={autocast_policy!r}: valid policies: {', '.join(AUTOCAST_POLICIES)}")
        self.kind, self.dim, self.heads, self.mixing = block.kind, block.dim, block.heads, block.mixing
        _adopt(self, block)
        identity = torch.zeros_like(block.pos_embed.weight, requires_grad=False)
        identity[:, 0, 1, 1] = 1.0
        self.register_buffer("_pos_identity", identity.detach(), persistent=False)
        self.channels_last = channels_last
        self.autocast_policy = autocast_policy
        self._folding = Folding()
        self._infer: Callable = block_infer
        self._lean: Callable = lean_block
        if compile:
            opts = dict(compile_options or {})
            self._infer = torch.compile(block_infer, **opts)
            self._lean = torch.compile(lean_block, **opts)
        watch(self)

    # the reference's helpers, for code that inspects blocks
    static_affinity = ContainerBlock.static_affinity
    mix_weights = ContainerBlock.mix_weights

    def folded(self, lowp: torch.dtype | None = None) -> BlockConstants:
        """The inference constants for GEMMs in `lowp` (None: the parameters' dtype).

        Cached; rebuilt when a parameter or BatchNorm statistic changes."""
        dtype = self.conv1.weight.dtype
        return self._folding.get(self, lowp, lambda: fold_block(self, dtype, lowp or dtype))

    def refresh(self) -> None:
        """Drop the folded constants (they are rebuilt on the next inference call)."""
        self._folding.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            y = self._lean(self, x)
        else:
            autocast_on, lowp = inference_precision(x, self.autocast_policy)
            with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
                y = self._infer(x, self.folded(lowp), lowp)
        return y if self.channels_last else y.contiguous()

    def extra_repr(self) -> str:
        return f"kind={self.kind.name}, dim={self.dim}, heads={self.heads}, mixing={self.mixing}"


class FastContainerNet(_Refolding):
    """A ContainerNet through the fast paths; same parameters and state_dict keys."""

    def __init__(self, net: ContainerNet, *, channels_last: bool = True, compile: bool = False,
                 compile_options: dict[str, Any] | None = None, autocast_policy: str = "auto"):
        super().__init__()
        if not isinstance(net, ContainerNet):
            raise TypeError(f"FastContainerNet needs a ContainerNet, got {type(net).__name__}")
        if autocast_policy not in AUTOCAST_POLICIES:
            raise ValueError(f"autocast_policy={autocast_policy!r}: valid policies: {', '.join(AUTOCAST_POLICIES)}")
        self.config = net.config
        _adopt(self, net)
        for i in range(1, len(self.config.stages) + 1):
            blocks = getattr(self, f"blocks{i}")
            fast = nn.ModuleList([FastContainerBlock(b) for b in blocks])
            fast.train(blocks.training)
            self.add_module(f"blocks{i}", fast)
        self.channels_last = channels_last
        self.autocast_policy = autocast_policy
        self._folding = Folding()
        self._infer: Callable = net_infer
        self._lean_features: Callable = self._lean_forward_features
        if compile:
            opts = dict(compile_options or {})
            self._infer = torch.compile(net_infer, **opts)
            self._lean_features = torch.compile(self._lean_forward_features, **opts)
        watch(self)

    stages = ContainerNet.stages

    def _build(self, lowp: torch.dtype | None) -> NetConstants:
        dtype = self.head.weight.dtype
        gemm = lowp or dtype
        stages = []
        for pe, blocks in self.stages():
            pk = PatchEmbedConstants(pe.proj.weight.to(gemm), pe.proj.bias.to(gemm), pe.patch_size,
                                     pe.norm.weight, pe.norm.bias, pe.norm.eps)  # LayerNorm stays fp32
            stages.append((pk, [blk.folded(lowp) for blk in blocks]))
        s, t = bn_affine(self.norm)
        w = self.head.weight.double()
        # head(mean(BN(x))) = (W diag(s)) mean(x) + (b + W t): the pool is linear.
        head_wt = (w * s).t().to(gemm).contiguous()
        head_b = (self.head.bias.double() + w @ t).to(gemm)
        return NetConstants(stages, head_wt, head_b)

    def folded(self, lowp: torch.dtype | None = None) -> NetConstants:
        return self._folding.get(self, lowp, lambda: self._build(lowp))

    def refresh(self) -> None:
        """Drop the folded constants (they are rebuilt on the next inference call)."""
        self._folding.clear()
        for _, blocks in self.stages():
            for block in blocks:
                block.refresh()

    def _check_input(self, x: torch.Tensor) -> None:
        stride = self.config.total_stride
        if x.ndim != 4 or x.shape[1] != self.config.in_chans or x.shape[-1] % stride or x.shape[-2] % stride:
            raise ValueError(f"input shape {tuple(x.shape)}: expected (B, {self.config.in_chans}, H, W) "
                             f"with H and W divisible by the total patch stride {stride}")

    def _lean_forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for patch_embed, blocks in self.stages():
            x = lean_patch_embed(patch_embed, x)
            for block in blocks:
                x = lean_block(block, x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's features (after the final norm), through the lean path."""
        self._check_input(x)
        y = self._lean_features(x)
        return y if self.channels_last else y.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.training or torch.is_grad_enabled():
            x = self._lean_features(x)
            b, c = x.shape[:2]
            return self.head(x.permute(0, 2, 3, 1).reshape(b, -1, c).mean(1))
        autocast_on, lowp = inference_precision(x, self.autocast_policy)
        with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
            return self._infer(x, self.folded(lowp), lowp)


def optimize(model: nn.Module, *, channels_last: bool = True, training: bool | None = None,
             compile: bool = False, compile_options: dict[str, Any] | None = None,
             share_parameters: bool = False, autocast_policy: str = "auto") -> nn.Module:
    """A fast module computing the same function as `model` (a ContainerBlock or a ContainerNet).

    training: the returned module's mode (default: False, i.e. eval, whatever `model`'s mode).
        In eval with autograd off it runs the folded inference path; in training mode (or eval
        with autograd on) the lean autograd path, whose gradients equal the reference's.
    channels_last: leave outputs channels_last (True, no copy) or return contiguous NCHW.
        Computation is channels_last either way.
    compile: run the paths through torch.compile (`compile_options` go to torch.compile).
    share_parameters: reuse `model`'s tensors (and submodules) instead of deep-copying them.
    autocast_policy: what the inference path does inside torch.autocast. "follow": GEMMs (1x1
        convs, attention where `attention_dtype` says so, dense token mixing, the static depthwise
        conv, patch embedding, head) in the autocast dtype; the residual stream, norms and
        pos_embed's depthwise conv in fp32.
        "fp32": ignore autocast. "auto" (default): "follow" where the device has fast
        low-precision GEMMs (CUDA, CPUs with AVX512-BF16/AMX), else "fp32" (on an AVX2-only CPU
        bf16 GEMMs run 10-100x slower).
    """
    if share_parameters:
        source = model
    else:
        with torch.inference_mode(False):  # plain tensors (with version counters), even if called
            source = copy.deepcopy(model)  # under inference_mode
    kwargs = dict(channels_last=channels_last, compile=compile, compile_options=compile_options,
                  autocast_policy=autocast_policy)
    if isinstance(source, ContainerNet):
        fast: nn.Module = FastContainerNet(source, **kwargs)
    elif isinstance(source, ContainerBlock):
        fast = FastContainerBlock(source, **kwargs)
    else:
        raise TypeError(f"optimize: expected a ContainerBlock or a ContainerNet, got {type(model).__name__}")
    return fast.train(bool(training))
