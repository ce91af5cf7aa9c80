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
  changes (tensor version counters), dtype or device changes, or a parameter, buffer or submodule is
  registered in the fast module's tree (torch's registration hooks, installed only while fast modules
  live and scoped to their trees: importing container changes no other module's behaviour).
* training mode (or eval with autograd on): the lean path. Same parameters, same BatchNorm
  batch statistics and running-stat updates, same DropPath draws, so gradients equal the
  reference's; it differs only in how it computes: channels_last throughout, 1x1 convs as
  linear layers on (tokens, C) views, fused SDPA (with its fused backward), Q/K/V as views,
  pos_embed's residual as its kernel's centre tap, beta folded into the static kernel.
* under autocast, the inference path follows `autocast_policy` (see `optimize`): with "follow"
  the GEMMs run in the autocast dtype on folded weights cast once and cached, and attention too
  where its kernel is faster so (`attention_dtype`), and the static depthwise conv that reads conv1's
  output, while the residual stream, norms and pos_embed's depthwise conv (it carries the residual)
  stay in fp32, like the reference's under autocast.

On a CPU (outside torch.compile), in fp32 and in bf16 autocast where the CPU has native bf16, the
inference path calls PyTorch's prepacked oneDNN operators instead of F.conv2d / addmm: weights
reordered once and cached with the folded constants, GELU fused into fc1 and, in fp32, the residual
adds into conv2 and fc2 (onednn; issue 17: at batch 1 this cut the 512@7 blocks' time by a third).

Modules: fold (the inference constants, typed per block part, and their cache), infer (the inference path), onednn (its
prepacked, fused primitives), lean (the training path), precision (autocast policies,
`attention_dtype`), layout (channels_last token views), modules (the nn.Modules and `optimize`).
"""
from __future__ import annotations

from container.fast.modules import FastContainerBlock, FastContainerNet, optimize
from container.fast.precision import attention_dtype

__all__ = ["optimize", "FastContainerBlock", "FastContainerNet", "attention_dtype"]
