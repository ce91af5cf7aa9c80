"""`openvino`: the network converted by openvino.convert_model and compiled for the CPU.

Precision pinned to the row's dtype (on CPUs with AVX512-BF16 OpenVINO picks bf16 by itself, which
would make an fp32 row compute something else); threads pinned to the row's; the latency hint; one
infer request, reused, reading the example input in place.
"""
from __future__ import annotations

import functools
import os
import time
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from bench.runtimes.converted import Converted, ExportFailed, one_line, quiet

if TYPE_CHECKING:  # annotations only: bench.options imports bench.runtimes.registry
    from bench.options import Options

PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


@functools.lru_cache(maxsize=1)
def _core():
    import openvino as ov  # here: bench imports without it

    return ov.Core()


def openvino_properties(options: Options, perf_count: bool = False) -> dict[str, object]:
    """The CPU plugin's properties for the row: threads, precision and the latency hint (PERF_COUNT with
    `perf_count`)."""
    properties: dict[str, object] = {"INFERENCE_NUM_THREADS": options.threads or torch.get_num_threads(),
                                     "INFERENCE_PRECISION_HINT": PRECISION[options.dtype],
                                     "PERFORMANCE_HINT": "LATENCY"}
    if perf_count:
        properties["PERF_COUNT"] = True
    return properties


def openvino_model(module: nn.Module, x: torch.Tensor):
    """`module` converted by openvino.convert_model on `x` (an openvino.Model, not compiled yet: what
    `python -m bench export` saves as IR). Raises ExportFailed (one line)."""
    import openvino as ov  # here: bench imports without it

    module.eval()
    try:
        with quiet():
            return ov.convert_model(module, example_input=x)
    except Exception as error:
        raise ExportFailed(one_line(error)) from error


def compile_model(model, options: Options, perf_count: bool = False):
    """`model` (an openvino.Model, or the path of an IR .xml, read by Core.read_model) compiled for the CPU
    with the row's properties. Raises ExportFailed (one line)."""
    try:
        if isinstance(model, (str, os.PathLike)):
            model = _core().read_model(os.fspath(model))
        return _core().compile_model(model, "CPU", openvino_properties(options, perf_count))
    except Exception as error:
        raise ExportFailed(one_line(error)) from error


def compile_openvino(module: nn.Module, x: torch.Tensor, options: Options, perf_count: bool = False):
    """`module` converted by openvino.convert_model and compiled for the CPU with the row's settings (an
    openvino.CompiledModel); `perf_count` also asks for per-node timings (PERF_COUNT, what bench.ops.profile
    reads), which is the only difference from what bench times. Raises ExportFailed (one line)."""
    return compile_model(openvino_model(module, x), options, perf_count)


def convert_openvino(module: nn.Module, x: torch.Tensor, options: Options) -> Converted:
    start = time.perf_counter()
    compiled = compile_openvino(module, x, options)
    return compiled_converted(compiled, x, time.perf_counter() - start)


def compiled_converted(compiled, x: torch.Tensor, convert_s: float) -> Converted:
    """What bench times of a CompiledModel on `x`: one infer request, reused, reading x in place."""
    request = compiled.create_infer_request()
    feeds = {0: x.detach().numpy()}

    def run() -> object:
        return request.infer(feeds, share_inputs=True, share_outputs=True)

    def output() -> torch.Tensor:
        run()
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return Converted("openvino", run, output, convert_s, torch_allocates=False)
