"""A plain reference of the Container block, written from the seed's description.

Every operator is an explicit matrix built with loops (no conv, no softmax-attention kernels),
so it checks container/ independently of how container/ computes.
"""
import math

import torch


def batch_norm(x, sd, prefix, train, eps=1e-5):
    if train:
        mean = x.mean(dim=(0, 2, 3))
        var = x.var(dim=(0, 2, 3), unbiased=False)
    else:
        mean, var = sd[prefix + ".running_mean"], sd[prefix + ".running_var"]
    shape = (1, -1, 1, 1)
    return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + eps) * sd[prefix + ".weight"].view(shape) \
        + sd[prefix + ".bias"].view(shape)


def conv1x1(x, sd, prefix):
    w = sd[prefix + ".weight"][:, :, 0, 0]
    return torch.einsum("oc,bchw->bohw", w, x) + sd[prefix + ".bias"].view(1, -1, 1, 1)


def banded_matrix(kernel, height, width):
    """(C, N, N) of a depthwise kernel (C, k, k) with zero padding, by enumerating every tap."""
    c, k, _ = kernel.shape
    pad = k // 2
    a = torch.zeros(c, height * width, height * width, dtype=kernel.dtype)
    for y in range(height):
        for x in range(width):
            for i in range(k):
                for j in range(k):
                    yy, xx = y + i - pad, x + j - pad
                    if 0 <= yy < height and 0 <= xx < width:
                        a[:, y * width + x, yy * width + xx] = kernel[:, i, j]
    return a


def apply_per_channel(a, x):
    b, c, h, w = x.shape
    return torch.einsum("cnm,bcm->bcn", a, x.reshape(b, c, h * w)).reshape(b, c, h, w)


def depthwise(x, sd, prefix):
    h, w = x.shape[-2:]
    return apply_per_channel(banded_matrix(sd[prefix + ".weight"][:, 0], h, w), x) \
        + sd[prefix + ".bias"].view(1, -1, 1, 1)


def attention(q, k, v, heads):
    b, c, h, w = q.shape
    d = c // heads
    out = torch.empty_like(v)
    for m in range(heads):
        group = slice(m * d, (m + 1) * d)
        qm, km, vm = (t[:, group].reshape(b, d, h * w) for t in (q, k, v))  # (B, d, N)
        logits = torch.einsum("bdn,bdm->bnm", qm, km) / math.sqrt(d)
        a = torch.exp(logits - logits.amax(-1, keepdim=True))
        a = a / a.sum(-1, keepdim=True)
        out[:, group] = torch.einsum("bnm,bdm->bdn", a, vm).reshape(b, d, h, w)
    return out


def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def mix_block(sd, x, heads, train=False):
    """The seed's MixBlock: x + dw3x3(x); attention and 5x5 dwconv on V mixed by sigmoid(sa_weight)."""
    x = x + depthwise(x, sd, "pos_embed")
    qkv = conv1x1(batch_norm(x, sd, "norm1", train), sd, "conv1")
    c = x.shape[1]
    q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
    w = torch.sigmoid(sd["sa_weight"])
    mixed = w * attention(q, k, v, heads) + (1 - w) * depthwise(v, sd, "conv")
    x = x + conv1x1(mixed, sd, "conv2")
    return x + conv1x1(gelu(conv1x1(batch_norm(x, sd, "norm2", train), sd, "mlp.fc1")), sd, "mlp.fc2")


def c_block(sd, x, train=False):
    """Container-Light's CBlock: the same with the 5x5 depthwise conv (named attn) as the only mixer."""
    x = x + depthwise(x, sd, "pos_embed")
    v = conv1x1(batch_norm(x, sd, "norm1", train), sd, "conv1")
    x = x + conv1x1(depthwise(v, sd, "attn"), sd, "conv2")
    return x + conv1x1(gelu(conv1x1(batch_norm(x, sd, "norm2", train), sd, "mlp.fc1")), sd, "mlp.fc2")
