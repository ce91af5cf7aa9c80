"""The kernels behind the batch-1 rows where torch-native loses, timed alone (torch.utils.benchmark, 2 threads, hot
caches): the notes in ../README.md quote its four tables, each printed by one function here.

Run from the repository root: .venv/bin/python results/runtimes-aot/kernels/kernels.py [gemm_gelu|gemm_layouts|
depthwise|torchscript] (default: all four).
"""
# ruff: noqa: B023  (each loop's lambdas are timed within that iteration, before its variables change)
import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

import bench
from bench.workload import build_reference, build_workload

torch.set_num_threads(2)
MKLDNN = torch.ops.mkldnn
MKL = torch.ops.mkl
# (tokens, dim, hidden) of the MLP at the four Container stages at batch 1: fc1 is dim -> hidden with GELU, fc2 back.
MLP_SHAPES = [(3136, 64, 256), (784, 128, 512), (196, 320, 1280), (49, 512, 2048)]


def median_us(fn, seconds: float) -> float:
    for _ in range(5):
        fn()
    return Timer("fn()", globals={"fn": fn}, num_threads=2).blocked_autorange(min_run_time=seconds).median * 1e6


def mlp_gemms():
    for tokens, dim, hidden in MLP_SHAPES:
        for k, n, gelu in ((dim, hidden, True), (hidden, dim, False)):
            yield tokens, k, n, gelu, torch.randn(tokens, k), torch.randn(n, k), torch.randn(n)


def gemm_gelu() -> None:
    """The fast path's prepacked oneDNN linear (GELU fused on fc1) against MKL's packed GEMM (with GELU as its own
    pass, and without) and plain F.linear."""
    for tokens, k, n, gelu, x, w, b in mlp_gemms():
        packed = MKLDNN._reorder_linear_weight(w, tokens)
        mkl_w = MKL._mkl_reorder_linear_weight(w, tokens)
        post, algorithm = ("gelu", "none") if gelu else ("none", "")
        variants = {
            "mkldnn": lambda: MKLDNN._linear_pointwise(x, packed, b, post, [], algorithm),
            "mkl_packed": lambda: (F.gelu(MKL._mkl_linear(x, mkl_w, w, b, tokens)) if gelu
                                   else MKL._mkl_linear(x, mkl_w, w, b, tokens)),
            "mkl_packed_nogelu": lambda: MKL._mkl_linear(x, mkl_w, w, b, tokens),
            "addmm": lambda: F.gelu(F.linear(x, w, b)) if gelu else F.linear(x, w, b),
        }
        print(tokens, k, n, gelu, " ".join(f"{name}={median_us(fn, 0.6):.0f}us" for name, fn in variants.items()))


def gemm_layouts() -> None:
    """oneDNN's linear on the (tokens, C) view against its 1x1 convolution on the channels_last view, and MKL's packed
    GEMM without GELU."""
    for tokens, k, n, gelu, x, w, b in mlp_gemms():
        side = math.isqrt(tokens)
        image = x.view(1, side, side, k).permute(0, 3, 1, 2)  # the same memory as a channels_last NCHW tensor
        packed = MKLDNN._reorder_linear_weight(w, tokens)
        conv_w = MKLDNN._reorder_convolution_weight(w.view(n, k, 1, 1), [0, 0], [1, 1], [1, 1], 1, list(image.shape))
        mkl_w = MKL._mkl_reorder_linear_weight(w, tokens)
        post, algorithm = ("gelu", "none") if gelu else ("none", "")
        variants = {
            "linear": lambda: MKLDNN._linear_pointwise(x, packed, b, post, [], algorithm),
            "conv1x1": lambda: MKLDNN._convolution_pointwise(image, conv_w, b, [0, 0], [1, 1], [1, 1], 1, post, [],
                                                             algorithm),
            "mkl": lambda: MKL._mkl_linear(x, mkl_w, w, b, tokens),
        }
        print(tokens, k, n, gelu, " ".join(f"{name}={median_us(fn, 0.5):.0f}us" for name, fn in variants.items()))


def depthwise() -> None:
    """The depthwise convolution at the four stage shapes: the fast path's prepacked oneDNN call against F.conv2d."""
    for channels, side in ((64, 56), (128, 28), (320, 14), (512, 7)):
        for kernel in (3, 5):
            x = torch.randn(1, channels, side, side)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            w, b, pad = torch.randn(channels, 1, kernel, kernel), torch.randn(channels), kernel // 2
            packed = MKLDNN._reorder_convolution_weight(w, [pad, pad], [1, 1], [1, 1], channels, list(x_cl.shape))
            variants = {
                "mkldnn_cl": lambda: MKLDNN._convolution_pointwise(x_cl, packed, b, [pad, pad], [1, 1], [1, 1],
                                                                   channels, "none", [], ""),
                "F_cl": lambda: F.conv2d(x_cl, w, b, padding=pad, groups=channels),
                "F_nchw": lambda: F.conv2d(x, w, b, padding=pad, groups=channels),
            }
            timings = " ".join(f"{name}={median_us(fn, 0.3):.1f}us" for name, fn in variants.items())
            print(channels, side, kernel, timings)


def torchscript() -> None:
    """TorchScript (trace, freeze, optimize_for_inference: prepacked oneDNN weights, no Python between the ops)
    against the fast path's step, on three batch-1 blocks."""
    warnings.filterwarnings("ignore")
    for kind, dim, side in (("conv", 512, 7), ("mix", 512, 7), ("conv", 128, 28)):
        target = bench.BlockTarget(kind, dim, side)
        reference, x = build_reference(target, 1, bench.Options())
        fast = build_workload(target, 1, bench.Options(runtime="fast"))
        with torch.inference_mode():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(reference.eval(), x)))
            error = ((frozen(x) - reference(x)).abs().max() / reference(x).abs().max()).item()
            print(target.name, f"fast={median_us(fast.step, 1.0) / 1e3:.3f}ms",
                  f"jit={median_us(lambda: frozen(x), 1.0) / 1e3:.3f}ms", "jit err", error)


if __name__ == "__main__":
    tables = {f.__name__: f for f in (gemm_gelu, gemm_layouts, depthwise, torchscript)}
    for name in sys.argv[1:] or tables:
        tables[name]()
