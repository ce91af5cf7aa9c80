"""Turn a target and options into the exact callable that gets measured, converted for the row's runtime."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from bench.options import Options
from bench.runtimes import convert, max_rel_error, reference_output
from bench.targets import Target

# Options lives in bench.options; it is importable from here too
__all__ = ["Options", "Workload", "build_reference", "build_workload", "convert_workload"]


@dataclass
class Workload:
    eager: nn.Module  # the reference module: what the FLOP counters trace and the check compares against
    x: torch.Tensor
    step: Callable[[], object]  # one call of the row's runtime (converted once), on x: what is timed
    module: nn.Module | None  # the torch module that runs, uncompiled (eager itself for reference); None: not torch
    runtime: str
    convert_s: float  # converting (export + compile; torch.compile's compiling first call); nan: nothing to convert
    torch_allocates: bool  # torch's allocator holds the call's memory (the torch runtimes), so its peak means something
    max_rel_error: float | None = None  # max |out - ref| / max |ref| against the reference on x; None: not checked
    settle_s: float = 0.0  # the runtime's worker threads stay busy this long after a call (Converted.settle_s)


def build_workload(target: Target, batch_size: int, options: Options, seed: int = 0, *,
                   check: bool = True) -> Workload:
    """The reference module built from `seed`, converted once for options.runtime, and (with `check`) its
    output checked against the reference module's on the same input. Raises bench.runtimes.ExportFailed
    when the runtime cannot convert the module."""
    reference, x = build_reference(target, batch_size, options, seed)
    return convert_workload(reference, x, options, check=check)


def build_reference(target: Target, batch_size: int, options: Options, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The reference module (from `seed`, on the device, in the mode options.mode asks) and its input."""
    torch.manual_seed(seed)
    device = torch.device(options.device)
    reference = target.build().to(device)
    reference.train(options.mode == "train")
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    x = torch.randn(target.input_shape(batch_size), device=device).contiguous(memory_format=memory_format)
    return reference, x


def convert_workload(reference: nn.Module, x: torch.Tensor, options: Options, *, check: bool = True) -> Workload:
    """The second half of build_workload: `reference` converted for options.runtime, and checked on `x`."""
    # The reference output comes first: a torch runtime may be the reference module itself, and a
    # training step changes its weights.
    expected = reference_output(reference, x, options.mode == "train", options.autocast()) if check else None
    converted = convert(options.runtime, reference, x, options)
    error = max_rel_error(converted.output(), expected) if expected is not None else None
    return Workload(reference, x, converted.run, converted.module, options.runtime, converted.convert_s,
                    converted.torch_allocates, error, converted.settle_s)
