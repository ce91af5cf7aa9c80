"""FLOPs from fvcore, cross-checked against torch.utils.flop_counter.FlopCounterMode.

Conventions: fvcore counts one multiply-add as one "flop"; we publish that as MACs and
FLOPs = 2 x MACs. FlopCounterMode counts FLOPs (2 per multiply-add) directly.

Both counters miss some ops silently: neither counts scaled_dot_product_attention on CPU, and
fvcore's generic einsum estimate is inexact, and FlopCounterMode overcounts the backward of grouped
convs. We register exact handlers for those, and record the ops each counter saw but could not
attribute.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

# fvcore operator names (its handle keys without "aten::") that FlopCounterMode counts too; the
# cross-check compares 2 x fvcore on these with FlopCounterMode's total.
SHARED_OPS = {"conv", "matmul", "bmm", "einsum", "linear", "addmm", "scaled_dot_product_attention", "mm",
              "_convolution", "baddbmm"}


def _sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = math.prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])  # Q K^T, then A V


def _einsum_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # Exact for one contraction: every distinct index is looped over once.
    equation = inputs[0].toIValue().replace(" ", "")
    operands = [get_shape(t) for t in inputs[1].node().inputs()]
    sizes: dict[str, int] = {}
    for letters, shape in zip(equation.split("->")[0].split(","), operands):
        if "..." in letters:
            raise NotImplementedError(f"einsum with ellipsis: {equation}")
        sizes.update(zip(letters, shape))
    return math.prod(sizes.values())


FVCORE_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "aten::einsum": _einsum_macs,
}


def _cpu_flash_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                   out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    # FlopCounterMode's own formula transposes the weight's shape and so counts a grouped conv's
    # input gradient as a dense conv (513x the forward for a 512-channel depthwise conv). Each
    # gradient it computes (input, weight) costs exactly the forward's multiply-adds.
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _flop_counter_mapping() -> dict[Any, Any]:
    aten = torch.ops.aten
    mapping: dict[Any, Any] = {aten.convolution_backward: _conv_backward_flops}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_flash_sdpa_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_flash_sdpa_backward_flops
    return mapping


@dataclass(frozen=True)
class AttentionCall:
    """One fused-attention kernel call, as the counters saw it: enough to time the kernel alone."""

    shapes: tuple[tuple[int, ...], ...]  # query, key, value
    strides: tuple[tuple[int, ...], ...]  # their strides (views into one projection, say)

    @property
    def flops(self) -> int:
        return sdpa_flop_count(*self.shapes)


@dataclass(frozen=True)
class FlopCount:
    macs_fvcore: int  # forward pass, fvcore convention (1 per multiply-add), with our handlers
    flops_flopcounter: int  # FlopCounterMode over the same forward pass (2 per multiply-add)
    by_operator_fvcore: dict[str, int] = field(default_factory=dict)
    unattributed_fvcore: tuple[str, ...] = ()  # ops fvcore saw but counted as zero
    unattributed_flopcounter: tuple[str, ...] = ()  # aten ops FlopCounterMode saw without a formula
    attention_calls: tuple[AttentionCall, ...] = ()  # fused-attention kernels, in call order

    @property
    def flops_fvcore(self) -> int:
        return 2 * self.macs_fvcore

    @property
    def shared_macs_fvcore(self) -> int:
        return sum(v for k, v in self.by_operator_fvcore.items() if k in SHARED_OPS)

    @property
    def crosscheck_rel_diff(self) -> float:
        """|2 x fvcore - FlopCounterMode| / FlopCounterMode over the ops both count."""
        reference = self.flops_flopcounter
        if reference == 0:
            return 0.0 if self.shared_macs_fvcore == 0 else math.inf
        return abs(2 * self.shared_macs_fvcore - reference) / reference

    @property
    def attention_flops(self) -> int:
        return sum(call.flops for call in self.attention_calls)

    def row(self) -> dict[str, Any]:
        return {
            "macs_fvcore": self.macs_fvcore,
            "flops_2x_macs_fvcore": self.flops_fvcore,
            "flops_flopcounter": self.flops_flopcounter,
            "flops_crosscheck_rel_diff": self.crosscheck_rel_diff,
            "fvcore_only_macs": self.macs_fvcore - self.shared_macs_fvcore,
            "unattributed_ops_fvcore": " ".join(self.unattributed_fvcore),
            "unattributed_ops_flopcounter": " ".join(self.unattributed_flopcounter),
            "attention_flops": self.attention_flops,
        }


class _AtenOpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op that runs, to list those FlopCounterMode has no formula for, and the
    fused-attention kernel calls (whatever the backend: CPU flash, CUDA flash, efficient, cuDNN)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()
        self.attention_calls: list[AttentionCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        name = str(func._overloadpacket)
        if "scaled_dot_product" in name and "backward" not in name:
            q, k, v = args[:3]
            self.attention_calls.append(AttentionCall((tuple(q.shape), tuple(k.shape), tuple(v.shape)),
                                                      (q.stride(), k.stride(), v.stride())))
        return func(*args, **(kwargs or {}))


def _op_name(packet: Any) -> str:
    return re.sub(r"^aten\.", "", str(packet))


# Shape and view ops move no arithmetic; listing them as "unattributed" would bury the real misses.
_NO_ARITHMETIC = {"view", "reshape", "permute", "transpose", "t", "expand", "unsqueeze", "squeeze", "flatten",
                  "split", "split_with_sizes", "chunk", "slice", "select", "detach", "_unsafe_view", "clone",
                  "contiguous", "alias", "empty", "empty_like", "zeros", "zeros_like", "ones_like", "new_empty",
                  "copy_", "_to_copy", "as_strided", "unbind", "lift_fresh", "empty_strided", "t_", "fill_",
                  "new_zeros", "ones", "zero_", "unflatten", "_reshape_alias", "stride", "sym_size", "sym_numel",
                  "convolution_backward_overrideable", "native_batch_norm", "_native_batch_norm_legit_no_training",
                  "_native_batch_norm_legit_functional", "native_layer_norm", "set_", "resize_"}


def count_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...] | torch.Tensor) -> FlopCount:
    """Count one forward pass of `model(*inputs)` with both counters."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jit tracing warnings say nothing about the counts
        analysis = FlopCountAnalysis(model, inputs).set_op_handle(**FVCORE_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        macs = int(analysis.total())
        by_operator = {k: int(v) for k, v in analysis.by_operator().items()}
        unattributed_fvcore = tuple(sorted(k.removeprefix("aten::") for k in analysis.unsupported_ops()))

    mapping = _flop_counter_mapping()
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    recorder = _AtenOpRecorder()
    with torch.no_grad(), counter, recorder:
        model(*inputs)
    counted = {_op_name(op) for op in counter.get_flop_counts().get("Global", {})}
    formulas = {_op_name(op) for op in (*counter.flop_registry, *mapping)}
    unattributed = tuple(sorted(name for name in map(_op_name, recorder.ops)
                                if name not in formulas and name not in counted and name not in _NO_ARITHMETIC))
    return FlopCount(macs, int(counter.get_total_flops()), by_operator, unattributed_fvcore, unattributed,
                     tuple(recorder.attention_calls))


def count_training_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...] | torch.Tensor) -> int:
    """FLOPs of forward + backward (FlopCounterMode; fvcore traces the forward pass only)."""
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    counter = FlopCounterMode(display=False, custom_mapping=_flop_counter_mapping())
    with counter:
        model(*inputs).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


__all__ = ["AttentionCall", "FlopCount", "count_flops", "count_training_flops", "SHARED_OPS"]
