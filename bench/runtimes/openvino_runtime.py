"""`openvino`: the network converted by openvino.convert_model and compiled for the CPU.

Precision pinned to the row's dtype (on CPUs with AVX512-BF16 OpenVINO picks bf16 by itself, which
would make an fp32 row compute something else); threads pinned to the row's; the latency hint; one
infer request, reused, reading the example input in place.
"""
from __future__ import annotations

import functools
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


def compile_openvino(module: nn.Module, x: torch.Tensor, options: Options, perf_count: bool = False):
    """`module` converted by openvino.convert_model and compiled for the CPU with the row's settings (an
    openvino.CompiledModel); `perf_count` also asks for per-node timings (PERF_COUNT, what bench.ops.profile
    reads), which is the only difference from what bench times. Raises ExportFailed (one line)."""
    import openvino as ov  # here: bench imports without it

    threads = options.threads or torch.get_num_threads()
    module.eval()
    properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": PRECISION[options.dtype],
                  "PERFORMANCE_HINT": "LATENCY"}
    if perf_count:
        properties["PERF_COUNT"] = True
    try:
        with quiet():
            model = ov.convert_model(module, example_input=x)
        return _core().compile_model(model, "CPU", properties)
    except Exception as error:
        raise ExportFailed(one_line(error)) from error


def convert_openvino(module: nn.Module, x: torch.Tensor, options: Options) -> Converted:
    start = time.perf_counter()
    compiled = compile_openvino(module, x, options)
    convert_s = time.perf_counter() - start
    request = compiled.create_infer_request()
    feeds = {0: x.detach().numpy()}

    def run() -> object:
        return request.infer(feeds, share_inputs=True, share_outputs=True)

    def output() -> torch.Tensor:
        run()
        return torch.from_numpy(request.get_output_tensor(0).data.copy())
    return Converted("openvino", run, output, convert_s, torch_allocates=False)
