"""The deployment runtimes that bench measures: one notion, `runtime`, one conversion path, one check.

    reference    the seed-faithful eager modules (container/)
    fast         container.optimize: the same function, computed leanly
    onnxruntime  torch.onnx.export(..., dynamo=True), run by an onnxruntime InferenceSession
    openvino     openvino.convert_model, compiled for the CPU
    aot          an AOTInductor package (torch.export, aoti_compile_and_package) of the faster of the reference
                 and fast modules, cached under results/cache/aot

`convert(runtime, module, x, options)` converts once and gives a `Converted` whose `run()` is what
gets timed; it raises `ExportFailed` (a one-line reason) when the network does not convert.
onnxruntime and openvino are imported only when asked for, so bench imports without them; `aot` needs
a C++ compiler (check_runtime).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from bench.runtimes.aot_runtime import convert_aot
from bench.runtimes.check import TOLERANCE, max_rel_error, reference_output, tolerance
from bench.runtimes.converted import Converted, ExportFailed, is_out_of_memory, one_line
from bench.runtimes.onnx_runtime import convert_onnxruntime
from bench.runtimes.openvino_runtime import convert_openvino
from bench.runtimes.registry import PACKAGES, RUNTIMES, TORCH_RUNTIMES, check_runtime
from bench.runtimes.torch_runtimes import convert_torch

if TYPE_CHECKING:  # annotations only: bench.options imports bench.runtimes.registry
    from bench.options import Options

__all__ = ["Converted", "ExportFailed", "PACKAGES", "RUNTIMES", "TOLERANCE", "TORCH_RUNTIMES", "check_runtime",
           "convert", "is_out_of_memory", "max_rel_error", "one_line", "reference_output", "tolerance"]


def convert(runtime: str, module: nn.Module, example_input: torch.Tensor, options: Options) -> Converted:
    """`module` (the reference, in the mode options.mode asks) converted once for `runtime`, bound to
    `example_input`. For the torch runtimes the module itself may be what runs (reference)."""
    check_runtime(runtime)
    if runtime in TORCH_RUNTIMES:
        return convert_torch(runtime, module, example_input, options)
    if runtime == "onnxruntime":
        return convert_onnxruntime(module, example_input, options)
    if runtime == "aot":
        return convert_aot(module, example_input, options)
    return convert_openvino(module, example_input, options)
