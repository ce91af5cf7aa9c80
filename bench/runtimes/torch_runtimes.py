"""The torch runtimes: `reference` (the seed-faithful eager modules) and `fast` (container.optimize).

The conversion, timed apart: container.optimize for `fast` (folding, re-laying weights), and with
torch.compile its compiling first call too; the reference converts nothing unless compiled.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

import container
from bench.runtimes.converted import Converted, ExportFailed, is_out_of_memory, one_line
from bench.targets import BenchInputError

if TYPE_CHECKING:  # annotations only: bench.options imports bench.runtimes.registry
    from bench.options import Options


def convert_torch(runtime: str, module: nn.Module, x: torch.Tensor, options: Options) -> Converted:
    training = options.mode == "train"
    start = time.perf_counter()
    if runtime == "fast":
        if not hasattr(container, "optimize"):
            raise BenchInputError("--runtime fast: this version of container/ has no optimize()")
        try:
            module = container.optimize(module, training=training)
        except (TypeError, ValueError, NotImplementedError) as error:  # a module it has no fast path for
            raise ExportFailed(one_line(error)) from error
    module = module.to(memory_format=torch.channels_last if options.channels_last else torch.contiguous_format)
    module.train(training)
    eager = module
    if options.compile:
        module = torch.compile(module)
    first: list[torch.Tensor] = []  # the forward output of the first call: what the check compares

    if training:
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)

        def step() -> object:
            optimizer.zero_grad(set_to_none=True)
            with options.autocast():
                out = module(x)
                loss = out.float().square().mean()
            if not first:
                first.append(out.detach().float().clone())
            loss.backward()
            optimizer.step()
            return loss
    else:
        def step() -> object:
            with torch.inference_mode(), options.autocast():
                return module(x)

    def output() -> torch.Tensor:
        if not first:
            out = step()
            if not training:
                first.append(out.detach().float().clone())
        return first[0]

    if options.compile:
        try:
            output()  # torch.compile compiles in the first call
        except Exception as error:
            if is_out_of_memory(error):
                raise
            raise ExportFailed(one_line(error)) from error
    convert_s = time.perf_counter() - start if (runtime == "fast" or options.compile) else math.nan
    return Converted(runtime, step, output, convert_s, torch_allocates=True, module=eager)
