"""The lean training path: the reference block's function and autograd graph (same parameters,
BatchNorm batch statistics, DropPath draws), without its copies and permutes."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from container.affinity import DepthwiseConv
from container.fast.layout import nchw, nhwc


def lean_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference block's function and autograd graph, without its copies and permutes.

    blk is a FastContainerBlock: a ContainerBlock's submodules plus the `_pos_identity` buffer."""
    b, c, h, w = x.shape
    n = h * w
    kind = blk.kind
    x = x.contiguous(memory_format=torch.channels_last)
    if torch.is_autocast_enabled(x.device.type):  # a low-precision conv must not round x itself
        x1 = x + blk.pos_embed(x)
    else:  # x + pos_embed(x) in one conv, the identity in the centre tap
        pos_w = blk.pos_embed.weight + blk._pos_identity.to(blk.pos_embed.weight.dtype)
        x1 = F.conv2d(x, pos_w, blk.pos_embed.bias, padding=1, groups=c)
    t = nhwc(blk.norm1(x1)).view(b, n, c)
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
        s = F.conv2d(nchw(v, b, h, w), sw, sb, padding=static.padding, groups=c)
        s = nhwc(s).view(b, n, c)
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
    x2 = _residual(nhwc(x1).view(b, n, c), y)
    t2 = nhwc(blk.norm2(nchw(x2, b, h, w))).view(b, n, c)
    hidden = F.gelu(F.linear(t2, blk.mlp.fc1.weight.view(-1, c), blk.mlp.fc1.bias))
    z = blk.drop_path(F.linear(hidden, blk.mlp.fc2.weight.view(c, -1), blk.mlp.fc2.bias))
    return nchw(_residual(x2, z), b, h, w)


def _residual(x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """x + branch, into the branch's (fresh, not saved for backward) buffer where the dtypes agree;
    under autocast (a low-precision branch) the sum is promoted, as in the reference."""
    return branch.add_(x) if branch.dtype == x.dtype else x + branch


def lean_patch_embed(pe: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = pe.proj(x)
    return pe.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
