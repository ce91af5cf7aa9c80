"""Fast paths for the Container block family: the same function as container/, computed leanly.

    fast = container.optimize(model)                  # eval: folded constants, inference fast path
    fast = container.optimize(model, training=True)   # train: lean autograd path, same parameters
    fast = container.optimize(model, compile=True)    # either, through torch.compile

`optimize` takes a `ContainerBlock` (any kind, `MixBlock`, `CBlock`) or a `ContainerNet` and returns
a `FastContainerBlock` / `FastContainerNet`. The fast module holds the reference's own submodules
under the reference's names, so it has the same parameters and the same state_dict: a reference
checkpoint loads into it with strict=True and its state_dict loads into a reference module. By
default the reference is deep-copied first; `share_parameters=True` reuses its tensors instead
(one optimizer for both; `.train()`/`.eval()` on either then also flips the other's submodules).

Three paths, picked per call:

* eval mode, autograd off (`torch.no_grad()` / `torch.inference_mode()`): the inference fast path.
  BatchNorm is folded into the next 1x1 conv (norm1 -> conv1, norm2 -> mlp.fc1, the network's final
  norm -> head through the linear mean-pool); the residual `x + pos_embed(x)` is the 3x3 depthwise
  kernel with 1 added to its centre tap; the static branch's mixing weight beta is folded into its
  kernel and bias; the residual stream is one channels_last tensor updated in place, and the 1x1
  convs are oneDNN convolutions on it (GEMMs on its token view when tokens are few). Attention is
  `F.scaled_dot_product_attention` reading Q, K, V as strided views of conv1's (tokens, 3C) output
  (no chunk, no copy); its (B, N, heads, d) output is already the channels_last layout that conv2
  reads. The folded constants are cached and rebuilt whenever a parameter or BatchNorm statistic
  changes (tensor version counters), dtype or device changes.
* training mode (or eval with autograd on): the lean path. Same parameters, same BatchNorm
  batch statistics and running-stat updates, same DropPath draws, so gradients equal the
  reference's; it differs only in how it computes: channels_last throughout, 1x1 convs as
  linear layers on (tokens, C) views, fused SDPA (with its fused backward), Q/K/V as views,
  pos_embed's residual as its kernel's centre tap, beta folded into the static kernel.
* under autocast, the inference path follows `autocast_policy` (see `optimize`): with "follow"
  the GEMMs run in the autocast dtype on folded weights cast once and cached, and attention too
  where its kernel is faster so (`attention_dtype`), while the residual stream, norms and
  depthwise convs stay in fp32, like the reference's under autocast.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from container.affinity import DepthwiseConv, TokenMixing
from container.blocks import ContainerBlock
from container.networks import ContainerNet

__all__ = ["optimize", "FastContainerBlock", "FastContainerNet", "attention_dtype"]


# --- folding ----------------------------------------------------------------------------------

def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = s * x + t (float64)."""
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return s, bn.bias.double() - bn.running_mean.double() * s


def _fold_block(block: ContainerBlock, dtype: torch.dtype, gemm_dtype: torch.dtype) -> dict[str, Any]:
    """The inference constants of one block, computed in float64 and rounded once.

    Depthwise kernels (pos_embed with its residual identity in the centre tap, the static conv
    scaled by beta) are in `dtype`; the 1x1 conv weights and biases and dense token-mixing matrices
    in `gemm_dtype`.
    """
    kind = block.kind
    pos_w = block.pos_embed.weight.double().clone()
    pos_w[:, 0, 1, 1] += 1.0  # x + dw3x3(x) == dw3x3 with 1 added to the centre tap
    pos_b = block.pos_embed.bias.double()

    s1, t1 = _bn_affine(block.norm1)
    w1 = block.conv1.weight.double()[:, :, 0, 0]
    b1 = block.conv1.bias.double() + w1 @ t1  # conv1(s1 * x + t1)
    w1 = w1 * s1
    w2 = block.conv2.weight.double()[:, :, 0, 0]
    b2 = block.conv2.bias.double()
    s2, t2 = _bn_affine(block.norm2)
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
            out["sw"] = cast(static.weight.double() * beta, dtype)
            out["sb"] = cast(static.bias.double() * beta, dtype)
            out["pad"] = static.padding[0]
        else:
            assert isinstance(static, TokenMixing)
            out["sw"] = cast(static.weight.double() * beta, gemm_dtype)  # (G, N, N)
            out["sb"] = cast(static.bias.double() * beta, gemm_dtype)    # (G, N)
            out["tokens"] = static.tokens
            out["groups"] = static.heads
    return out


# --- the inference fast path (pure functions of the folded constants) ---------------------------

def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) channels_last -> its (B*H*W, C) token-major view (no copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _nchw(t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*H*W, C) or (B, N, C) token-major -> its (B, C, H, W) channels_last view."""
    return t.reshape(b, h, w, -1).permute(0, 3, 1, 2)


def _static_dense(k: dict[str, Any], v: torch.Tensor, b: int, n: int, o: torch.Tensor | None,
                  alpha: float) -> torch.Tensor:
    """beta * (W v + bias) [+ alpha * o] for dense token mixing; v and o are (B, N, C) views.

    Each group's (N, N) weight is shared by the batch: a batched GEMM over a stride-0 expansion,
    reading v in place; the weight itself is never copied."""
    c = v.shape[-1]
    groups = k["groups"]
    w, bias = k["sw"], k["sb"]
    if groups == 1:
        w = w[0].expand(b, n, n)
        if o is None:
            return torch.baddbmm(bias[0][:, None], w, v)
        return torch.baddbmm(o, w, v, beta=alpha).add_(bias[0][:, None])
    d = c // groups
    out = torch.empty(b, n, c, dtype=v.dtype, device=v.device)
    for g in range(groups):
        cols = slice(g * d, (g + 1) * d)
        s = torch.baddbmm(bias[g][:, None], w[g].expand(b, n, n), v[:, :, cols])
        if o is None:
            out[:, :, cols] = s
        else:
            torch.add(s, o[:, :, cols], alpha=alpha, out=out[:, :, cols])
    return out


def attention_dtype(device: torch.device, gemm_dtype: torch.dtype) -> torch.dtype:
    """The dtype fused attention runs in when the GEMMs run in `gemm_dtype`.

    torch's CPU flash-attention kernel is fast in bf16/fp16 only through AMX tiles; without them
    it converts each tile and runs slower than in fp32 (AVX512-BF16 EPYC, head_dim 32, the four
    stage shapes: 8-26% slower), so there attention stays in fp32, which is also more accurate."""
    if device.type == "cpu" and gemm_dtype in (torch.bfloat16, torch.float16) \
            and not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return torch.float32
    return gemm_dtype


def _token_mixing(k: dict[str, Any], qkv: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """Token mixing of conv1's output qkv (B*N, 3C or C) -> (B*N, C)."""
    c, heads, n = k["dim"], k["heads"], h * w
    static, alpha = k["static"], k["alpha"]
    o = None
    if qkv.shape[-1] == 3 * c:
        d = c // heads
        t = qkv.view(b, n, 3, heads, d)
        adt = k["attention_dtype"]
        # (B, heads, N, d) strided views; copies only where attention runs in another dtype
        q, kk, v = (t[:, :, i].transpose(1, 2).to(adt) for i in range(3))
        # The CPU flash kernel writes its output as (B, N, heads, d): conv2's (tokens, C) layout.
        o = F.scaled_dot_product_attention(q, kk, v).to(qkv.dtype).transpose(1, 2).reshape(b, n, c)
        if static is None:
            return o.view(b * n, c)
        v = qkv.view(b, n, 3 * c)[:, :, 2 * c:]
    else:
        v = qkv.view(b, n, c)
    if static == "conv":
        s = F.conv2d(_nchw(v.to(k["sw"].dtype), b, h, w), k["sw"], k["sb"], padding=k["pad"], groups=c)
        s = _nhwc(s)
        return s if o is None else s.add_(o.view(b * n, c), alpha=alpha)
    if (h, w) != tuple(k["tokens"]):
        raise ValueError(
            f"input tokens {h}x{w}: this dense token-mixing affinity was built for "
            f"{k['tokens'][0]}x{k['tokens'][1]} (set the config's image_size to match)")
    return _static_dense(k, v, b, n, o, alpha).view(b * n, c)


# oneDNN's channels_last 1x1 convolution beats a GEMM on the token view when there are many tokens
# (10-25% faster at 3,136-12,544 on this project's AVX512 EPYC) and loses when there are few (2-3x
# slower at 49 tokens with 2,048 input channels; the two cross near 1,000): below this many tokens
# the 1x1 convs run as addmm.
GEMM_BELOW_TOKENS = 1024


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution of channels_last x, as oneDNN's convolution or as addmm on its token view."""
    b, c, h, w = x.shape
    if b * h * w >= GEMM_BELOW_TOKENS:
        return F.conv2d(x, weight, bias)
    return _nchw(torch.addmm(bias, _nhwc(x), weight.view(-1, c).t()), b, h, w)


def _lowp(t: torch.Tensor, lowp: torch.dtype | None) -> torch.Tensor:
    return t if lowp is None else t.to(lowp)


def block_infer(x: torch.Tensor, k: dict[str, Any], lowp: torch.dtype | None = None) -> torch.Tensor:
    """One block on its folded constants: (B, C, H, W) -> (B, C, H, W) channels_last.

    The residual stream u is one channels_last tensor that the block updates in place. The 1x1
    convs run on it as oneDNN convolutions, or as `addmm` on its (tokens, C) view where there are
    few tokens (`_conv1x1`); token mixing reads conv1's output as its (tokens, 3C) view. Under
    autocast, lowp is its dtype: the 1x1 conv inputs are cast to it and their outputs added to the
    stream, which stays in the parameters' dtype, like the reference's.
    """
    b, c, h, w = x.shape
    x = x.to(k["pos_w"].dtype).contiguous(memory_format=torch.channels_last)
    u = F.conv2d(x, k["pos_w"], k["pos_b"], padding=1, groups=c)  # x + pos_embed(x)
    qkv = _conv1x1(_lowp(u, lowp), k["w1"], k["b1"])              # norm1 is folded into conv1
    m = _token_mixing(k, _nhwc(qkv), b, h, w)
    del qkv
    u.add_(_conv1x1(_lowp(_nchw(m, b, h, w), lowp), k["w2"], k["b2"]))  # x2
    del m
    hidden = _conv1x1(_lowp(u, lowp), k["wf1"], k["bf1"])         # norm2 is folded into fc1
    torch.ops.aten.gelu_(_nhwc(hidden))  # on the token view: 1.4-2x faster than on the 4-D view
    u.add_(_conv1x1(hidden, k["wf2"], k["bf2"]))  # x3
    return u


def _patch_embed_infer(x: torch.Tensor, k: dict[str, Any], lowp: torch.dtype | None) -> torch.Tensor:
    y = F.conv2d(_lowp(x, lowp), k["w"], k["b"], stride=k["stride"]).to(k["ln_w"].dtype)
    # LayerNorm over channels on the contiguous (B, H, W, C) view: no permute copies.
    return F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), k["ln_w"], k["ln_b"], k["eps"]).permute(0, 3, 1, 2)


def net_infer(x: torch.Tensor, k: dict[str, Any], lowp: torch.dtype | None = None) -> torch.Tensor:
    """A whole ContainerNet on its folded constants (lowp as in block_infer)."""
    x = x.to(k["stages"][0][0]["ln_w"].dtype).contiguous(memory_format=torch.channels_last)
    for pe, blocks in k["stages"]:
        x = _patch_embed_infer(x, pe, lowp)
        for bk in blocks:
            x = block_infer(x, bk, lowp)
    b, c = x.shape[:2]
    pooled = x.permute(0, 2, 3, 1).reshape(b, -1, c).mean(1)
    return torch.addmm(k["head_b"], _lowp(pooled, lowp), k["head_wt"])  # the final norm is in the head


AUTOCAST_POLICIES = ("auto", "follow", "fp32")


def _native_low_precision(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this device has fast `dtype` GEMMs (CUDA; CPUs with AVX512-BF16/AMX/AVX512-FP16)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


def _inference_precision(x: torch.Tensor, policy: str) -> tuple[bool, torch.dtype | None]:
    """(is autocast on, the low-precision dtype the inference path should compute its GEMMs in)."""
    device = x.device.type
    if device not in ("cpu", "cuda") or not torch.is_autocast_enabled(device):
        return False, None
    dtype = torch.get_autocast_dtype(device)
    if policy == "fp32" or (policy == "auto" and not _native_low_precision(x.device, dtype)):
        return True, None
    return True, dtype


# --- the lean training path --------------------------------------------------------------------

def _lean_block(blk: "FastContainerBlock", x: torch.Tensor) -> torch.Tensor:
    """The reference block's function and autograd graph, without its copies and permutes."""
    b, c, h, w = x.shape
    n = h * w
    kind = blk.kind
    x = x.contiguous(memory_format=torch.channels_last)
    if torch.is_autocast_enabled(x.device.type):  # a low-precision conv must not round x itself
        x1 = x + blk.pos_embed(x)
    else:  # x + pos_embed(x) in one conv, the identity in the centre tap
        pos_w = blk.pos_embed.weight + blk._pos_identity.to(blk.pos_embed.weight.dtype)
        x1 = F.conv2d(x, pos_w, blk.pos_embed.bias, padding=1, groups=c)
    t = _nhwc(blk.norm1(x1)).view(b, n, c)
    qkv = F.linear(t, blk.conv1.weight.view(blk.conv1.out_channels, c), blk.conv1.bias)

    alpha, beta = (blk.mix_weights() if kind.mixed else (None, None))
    o = None
    if kind.dynamic:
        d = c // blk.heads
        t5 = qkv.view(b, n, 3, blk.heads, d)
        q, k, v = (t5[:, :, i].transpose(1, 2) for i in range(3))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        v = qkv[:, :, 2 * c:]
    else:
        v = qkv
    static = blk.static_affinity
    if static is None:
        m = o
    elif isinstance(static, DepthwiseConv):
        sw, sb = static.weight, static.bias
        if beta is not None:
            sw, sb = sw * beta, sb * beta
        s = F.conv2d(_nchw(v, b, h, w), sw, sb, padding=static.padding, groups=c)
        s = _nhwc(s).view(b, n, c)
        m = s if o is None else torch.addcmul(s, o, alpha)
    else:
        static.check_tokens(h, w)
        g = static.heads
        sw, sb = static.weight, static.bias
        if beta is not None:
            sw, sb = sw * beta, sb * beta
        d = c // g
        s = torch.cat([torch.baddbmm(sb[i][:, None], sw[i].expand(b, n, n), v[:, :, i * d:(i + 1) * d])
                       for i in range(g)], dim=-1) if g > 1 else \
            torch.baddbmm(sb[0][:, None], sw[0].expand(b, n, n), v)
        m = s if o is None else torch.addcmul(s, o, alpha)

    y = blk.drop_path(F.linear(m, blk.conv2.weight.view(c, c), blk.conv2.bias))
    x2 = _residual(_nhwc(x1).view(b, n, c), y)
    t2 = _nhwc(blk.norm2(_nchw(x2, b, h, w))).view(b, n, c)
    hidden = F.gelu(F.linear(t2, blk.mlp.fc1.weight.view(-1, c), blk.mlp.fc1.bias))
    z = blk.drop_path(F.linear(hidden, blk.mlp.fc2.weight.view(c, -1), blk.mlp.fc2.bias))
    return _nchw(_residual(x2, z), b, h, w)


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, into the branch's (fresh, not saved for backward) buffer where the dtypes agree;
    under autocast (a low-precision branch) the sum is promoted, as in the reference."""
    return branch.add_(x) if branch.dtype == x.dtype else x + branch


def _lean_patch_embed(pe: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = pe.proj(x)
    return pe.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --- modules -------------------------------------------------------------------------------------

def _version_key(tensors: list[torch.Tensor]) -> tuple:
    # Inference tensors (made under torch.inference_mode) have no version counter: for those only
    # replacing the tensor is noticed, and in-place changes need `refresh()`.
    return tuple((id(t), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in tensors)


class _Folding:
    """Cache of folded constants, rebuilt when any source tensor changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.consts: dict[Any, Any] = {}

    def clear(self) -> None:
        self.key, self.consts = None, {}

    def get(self, owner: nn.Module, mode: Any, build: Callable[[], Any]) -> Any:
        key = _version_key(list(owner.parameters()) + list(owner.buffers()))
        if key != self.key:
            self.key, self.consts = key, {}
        if mode not in self.consts:
            device = next(owner.parameters()).device.type
            with torch.no_grad(), torch.inference_mode(False), torch.autocast(device, enabled=False):
                self.consts[mode] = build()
        return self.consts[mode]


def _adopt(target: nn.Module, source: nn.Module) -> None:
    """Give `target` the parameters, buffers and submodules of `source` under the same names."""
    for name, p in source._parameters.items():
        target.register_parameter(name, p)
    for name, buf in source._buffers.items():
        target.register_buffer(name, buf, persistent=name not in source._non_persistent_buffers_set)
    for name, child in source._modules.items():
        target.add_module(name, child)
    target.train(source.training)


class FastContainerBlock(nn.Module):
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
        self._folding = _Folding()
        self._infer: Callable = block_infer
        self._lean: Callable = _lean_block
        if compile:
            opts = dict(compile_options or {})
            self._infer = torch.compile(block_infer, **opts)
            self._lean = torch.compile(_lean_block, **opts)

    # the reference's helpers, for code that inspects blocks
    static_affinity = ContainerBlock.static_affinity
    mix_weights = ContainerBlock.mix_weights

    def folded(self, lowp: torch.dtype | None = None) -> dict[str, Any]:
        """The inference constants for GEMMs in `lowp` (None: the parameters' dtype).

        Cached; rebuilt when a parameter or BatchNorm statistic changes."""
        dtype = self.conv1.weight.dtype
        return self._folding.get(self, lowp, lambda: _fold_block(self, dtype, lowp or dtype))

    def refresh(self) -> None:
        """Drop the folded constants (they are rebuilt on the next inference call)."""
        self._folding.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled():
            y = self._lean(self, x)
        else:
            autocast_on, lowp = _inference_precision(x, self.autocast_policy)
            with torch.autocast(x.device.type, enabled=False) if autocast_on else contextlib.nullcontext():
                y = self._infer(x, self.folded(lowp), lowp)
        return y if self.channels_last else y.contiguous()

    def extra_repr(self) -> str:
        return f"kind={self.kind.name}, dim={self.dim}, heads={self.heads}, mixing={self.mixing}"


class FastContainerNet(nn.Module):
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
        self._folding = _Folding()
        self._infer: Callable = net_infer
        self._lean_features: Callable = self._lean_forward_features
        if compile:
            opts = dict(compile_options or {})
            self._infer = torch.compile(net_infer, **opts)
            self._lean_features = torch.compile(self._lean_forward_features, **opts)

    stages = ContainerNet.stages

    def _build(self, lowp: torch.dtype | None) -> dict[str, Any]:
        dtype = self.head.weight.dtype
        gemm = lowp or dtype
        stages = []
        for pe, blocks in self.stages():
            pk = {"w": pe.proj.weight.to(gemm), "b": pe.proj.bias.to(gemm), "stride": pe.patch_size,
                  "ln_w": pe.norm.weight, "ln_b": pe.norm.bias, "eps": pe.norm.eps}  # LayerNorm stays fp32
            stages.append((pk, [blk.folded(lowp) for blk in blocks]))
        s, t = _bn_affine(self.norm)
        w = self.head.weight.double()
        # head(mean(BN(x))) = (W diag(s)) mean(x) + (b + W t): the pool is linear.
        head_wt = (w * s).t().to(gemm).contiguous()
        head_b = (self.head.bias.double() + w @ t).to(gemm)
        return {"stages": stages, "head_wt": head_wt, "head_b": head_b}

    def folded(self, lowp: torch.dtype | None = None) -> dict[str, Any]:
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
            x = _lean_patch_embed(patch_embed, x)
            for block in blocks:
                x = _lean_block(block, x)
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
        autocast_on, lowp = _inference_precision(x, self.autocast_policy)
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
        convs, attention where `attention_dtype` says so, dense token mixing, patch embedding,
        head) in the autocast dtype, the residual stream, norms and depthwise convs in fp32.
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
