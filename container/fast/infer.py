"""The inference fast path: pure functions of the folded constants (container.fast.fold), eval mode
with autograd off. See container/fast/__init__.py for what is folded and why."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from container.fast import onednn
from container.fast.fold import (BlockConstants, DepthwiseConstants, NetConstants, PatchEmbedConstants,
                                 TokenMixingConstants)
from container.fast.layout import nchw, nhwc


# Below this many tokens dense token mixing runs all its groups as one batched GEMM over a (G, N, B*d) copy of
# v, where per-group ops cost more than the copy (16 groups at dim 512); above it, one GEMM per group reads v
# in place (A/B at batch 1 on this project's AVX512 EPYC, 2 threads, fp32 and bf16: 0.62-0.96x at 7x7 and
# 14x14 tokens; 0.84-1.50x, mostly slower, at 28x28 and 56x56).
DENSE_BATCHED_BELOW_TOKENS = 256


def _static_dense(mix: TokenMixingConstants, v: torch.Tensor, b: int, n: int, o: torch.Tensor | None,
                  alpha: float) -> torch.Tensor:
    """beta * (W v + bias) [+ alpha * o] for dense token mixing; v and o are (B, N, C) views.

    Each group's (N, N) weight is shared by the batch (a stride-0 expansion): it is never copied."""
    c = v.shape[-1]
    groups, w, bias = mix.groups, mix.weight, mix.bias
    if groups == 1:
        w = w[0].expand(b, n, n)
        if o is None:
            return torch.baddbmm(bias[0][:, None], w, v)
        return torch.baddbmm(o, w, v, beta=alpha).add_(bias[0][:, None])
    d = c // groups
    if n < DENSE_BATCHED_BELOW_TOKENS:
        vg = v.reshape(b, n, groups, d).permute(2, 1, 0, 3).reshape(groups, n, b * d)
        s = torch.baddbmm(bias[:, :, None], w, vg).view(groups, n, b, d).permute(2, 1, 0, 3)
        out = torch.empty(b, n, c, dtype=v.dtype, device=v.device)
        if o is None:
            out.view(b, n, groups, d).copy_(s)
        else:
            torch.add(s, o.reshape(b, n, groups, d), alpha=alpha, out=out.view(b, n, groups, d))
        return out
    out = torch.empty(b, n, c, dtype=v.dtype, device=v.device)
    for g in range(groups):
        cols = slice(g * d, (g + 1) * d)
        s = torch.baddbmm(bias[g][:, None], w[g].expand(b, n, n), v[:, :, cols])
        if o is None:
            out[:, :, cols] = s
        else:
            torch.add(s, o[:, :, cols], alpha=alpha, out=out[:, :, cols])
    return out


def _token_mixing(k: BlockConstants, qkv: torch.Tensor, b: int, h: int, w: int, packed: bool = False) -> torch.Tensor:
    """Token mixing of conv1's output qkv (B*N, 3C or C) -> (B*N, C); `packed`: the static depthwise conv
    through container.fast.onednn."""
    c, heads, n = k.dim, k.heads, h * w
    static, alpha = k.static, k.alpha
    o = None
    if qkv.shape[-1] == 3 * c:
        d = c // heads
        t = qkv.view(b, n, 3, heads, d)
        adt = k.attention_dtype
        # (B, heads, N, d) strided views; copies only where attention runs in another dtype
        q, kk, v = (t[:, :, i].transpose(1, 2).to(adt) for i in range(3))
        # The CPU flash kernel writes its output as (B, N, heads, d): conv2's (tokens, C) layout.
        o = F.scaled_dot_product_attention(q, kk, v).to(qkv.dtype).transpose(1, 2).reshape(b, n, c)
        if static is None:
            return o.view(b * n, c)
        v = qkv.view(b, n, 3 * c)[:, :, 2 * c:]
    else:
        v = qkv.view(b, n, c)
    if isinstance(static, DepthwiseConstants):
        vs = nchw(v.to(static.weight.dtype), b, h, w)
        if packed:
            s = onednn.conv(vs, static.weight, static.bias, k.prepacked, padding=static.padding, groups=c)
        else:
            s = F.conv2d(vs, static.weight, static.bias, padding=static.padding, groups=c)
        s = nhwc(s)
        return s if o is None else s.add_(o.view(b * n, c), alpha=alpha)
    if (h, w) != static.tokens:
        raise ValueError(
            f"input tokens {h}x{w}: this dense token-mixing affinity was built for "
            f"{static.tokens[0]}x{static.tokens[1]} (set the config's image_size to match)")
    return _static_dense(static, v, b, n, o, alpha).view(b * n, c)


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
    return nchw(torch.addmm(bias, nhwc(x), weight.view(-1, c).t()), b, h, w)


def _lowp(t: torch.Tensor, lowp: torch.dtype | None) -> torch.Tensor:
    return t if lowp is None else t.to(lowp)


# With prepacked weights (container.fast.onednn) the GEMM on the token view still beats the 1x1 convolution
# below this many tokens.
ONEDNN_GEMM_BELOW_TOKENS = 1024


def _block_onednn(x: torch.Tensor, k: BlockConstants, lowp: torch.dtype | None) -> torch.Tensor:
    """block_infer on CPU through oneDNN's prepacked, fused primitives (same arithmetic): fp32, or bf16
    GEMMs on the fp32 stream (lowp), whose residual adds cannot be post-ops (container.fast.onednn)."""
    b, c, h, w = x.shape
    p = k.prepacked
    x = x.contiguous(memory_format=torch.channels_last)
    u = onednn.conv(x, k.pos_w, k.pos_b, p, padding=1, groups=c)  # x + pos_embed(x)
    if b * h * w < ONEDNN_GEMM_BELOW_TOKENS:
        t = nhwc(u)
        m = _token_mixing(k, onednn.linear(_lowp(t, lowp), k.w1, k.b1, p), b, h, w, packed=True)
        if lowp is not None:
            t.add_(onednn.linear(m.to(lowp), k.w2, k.b2, p))
            t.add_(onednn.linear(onednn.linear(t.to(lowp), k.wf1, k.bf1, p, gelu=True), k.wf2, k.bf2, p))
            return u
        t = onednn.linear_add(m, t, k.w2, k.b2, p)
        t = onednn.linear_add(onednn.linear(t, k.wf1, k.bf1, p, gelu=True), t, k.wf2, k.bf2, p)
        return nchw(t, b, h, w)
    m = _token_mixing(k, nhwc(onednn.conv(_lowp(u, lowp), k.w1, k.b1, p)), b, h, w, packed=True)
    if lowp is not None:
        u.add_(onednn.conv(nchw(m.to(lowp), b, h, w), k.w2, k.b2, p))
        del m
        u.add_(onednn.conv(onednn.conv(u.to(lowp), k.wf1, k.bf1, p, gelu=True), k.wf2, k.bf2, p))
        return u
    onednn.conv_add_(u, nchw(m, b, h, w), k.w2, k.b2, p)
    del m
    onednn.conv_add_(u, onednn.conv(u, k.wf1, k.bf1, p, gelu=True), k.wf2, k.bf2, p)
    return u


def block_infer(x: torch.Tensor, k: BlockConstants, lowp: torch.dtype | None = None) -> torch.Tensor:
    """One block on its folded constants: (B, C, H, W) -> (B, C, H, W) channels_last.

    The residual stream u is one channels_last tensor that the block updates in place. The 1x1
    convs run on it as oneDNN convolutions, or as `addmm` on its (tokens, C) view where there are
    few tokens (`_conv1x1`); token mixing reads conv1's output as its (tokens, 3C) view. Under
    autocast, lowp is its dtype: the 1x1 conv inputs are cast to it and their outputs added to the
    stream, which stays in the parameters' dtype, like the reference's.
    """
    x = x.to(k.pos_w.dtype)
    if onednn.usable(x, lowp):
        return _block_onednn(x, k, lowp)
    b, c, h, w = x.shape
    x = x.contiguous(memory_format=torch.channels_last)
    u = F.conv2d(x, k.pos_w, k.pos_b, padding=1, groups=c)  # x + pos_embed(x)
    qkv = _conv1x1(_lowp(u, lowp), k.w1, k.b1)  # norm1 is folded into conv1
    m = _token_mixing(k, nhwc(qkv), b, h, w)
    del qkv
    u.add_(_conv1x1(_lowp(nchw(m, b, h, w), lowp), k.w2, k.b2))  # x2
    del m
    hidden = _conv1x1(_lowp(u, lowp), k.wf1, k.bf1)  # norm2 is folded into fc1
    torch.ops.aten.gelu_(nhwc(hidden))  # on the token view: 1.4-2x faster than on the 4-D view
    u.add_(_conv1x1(hidden, k.wf2, k.bf2))  # x3
    return u


def _patch_embed_infer(x: torch.Tensor, k: PatchEmbedConstants, lowp: torch.dtype | None) -> torch.Tensor:
    if onednn.usable(x, lowp):
        y = onednn.conv(_lowp(x, lowp), k.weight, k.bias, k.prepacked, stride=k.stride).to(k.ln_w.dtype)
    else:
        y = F.conv2d(_lowp(x, lowp), k.weight, k.bias, stride=k.stride).to(k.ln_w.dtype)
    # LayerNorm over channels on the contiguous (B, H, W, C) view: no permute copies.
    return F.layer_norm(y.permute(0, 2, 3, 1), (y.shape[1],), k.ln_w, k.ln_b, k.eps).permute(0, 3, 1, 2)


def net_infer(x: torch.Tensor, k: NetConstants, lowp: torch.dtype | None = None) -> torch.Tensor:
    """A whole ContainerNet on its folded constants (lowp as in block_infer)."""
    x = x.to(k.stages[0][0].ln_w.dtype).contiguous(memory_format=torch.channels_last)
    for pe, blocks in k.stages:
        x = _patch_embed_infer(x, pe, lowp)
        for bk in blocks:
            x = block_infer(x, bk, lowp)
    b, c = x.shape[:2]
    pooled = x.permute(0, 2, 3, 1).reshape(b, -1, c).mean(1)
    return torch.addmm(k.head_b, _lowp(pooled, lowp), k.head_wt)  # the final norm is in the head
