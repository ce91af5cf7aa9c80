"""Turn a target and options into the exact callable that gets measured."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.nn as nn

import container
from bench.roofline import DTYPES
from bench.targets import BenchInputError, Target
from bench.timing import StopRule

MODES = ("inference", "train")
IMPLS = ("reference", "fast")


@dataclass(frozen=True)
class Options:
    """How to run what is measured. One Options object describes one deployment setting."""

    device: str = "cpu"
    dtype: str = "fp32"  # fp32, or bf16 / fp16 through autocast
    channels_last: bool = False
    compile: bool = False
    mode: str = "inference"  # or "train": forward, backward, optimizer step
    impl: str = "reference"  # or "fast": container.optimize(...)
    threads: int | None = None
    stop: StopRule = field(default_factory=StopRule)

    def replace(self, **changes) -> "Options":
        return replace(self, **changes)

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise BenchInputError(f"--dtype {self.dtype!r}: valid dtypes: {', '.join(DTYPES)}")
        if self.mode not in MODES:
            raise BenchInputError(f"--mode {self.mode!r}: valid modes: {', '.join(MODES)}")
        if self.impl not in IMPLS:
            raise BenchInputError(f"--impl {self.impl!r}: valid implementations: {', '.join(IMPLS)}")
        if self.threads is not None and self.threads < 1:
            raise BenchInputError(f"--threads {self.threads}: must be >= 1")
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise BenchInputError(f"--device {self.device!r}: valid devices: cpu, cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise BenchInputError(f"--device {self.device}: CUDA is not available on this machine")
        if self.dtype != "fp32":
            try:
                with self.autocast():
                    torch.mm(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device))
            except Exception as e:  # the device or build cannot run this dtype
                raise BenchInputError(f"--dtype {self.dtype}: not supported on {self.device} ({e})") from None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.dtype])

    def columns(self) -> dict[str, object]:
        return {"device": self.device, "dtype": self.dtype, "channels_last": self.channels_last,
                "compile": self.compile, "mode": self.mode, "impl": self.impl}


@dataclass
class Workload:
    module: nn.Module  # what runs (optimised / compiled as asked)
    eager: nn.Module  # the same, uncompiled: what the FLOP counters trace
    x: torch.Tensor
    step: Callable[[], object]


def build_workload(target: Target, batch_size: int, options: Options, seed: int = 0) -> Workload:
    torch.manual_seed(seed)
    device = torch.device(options.device)
    module = target.build().to(device)
    training = options.mode == "train"
    module.train(training)
    if options.impl == "fast":
        if not hasattr(container, "optimize"):
            raise BenchInputError("--impl fast: this version of container/ has no optimize()")
        module = container.optimize(module, training=training)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    x = torch.randn(target.input_shape(batch_size), device=device).contiguous(memory_format=memory_format)
    eager = module
    if options.compile:
        module = torch.compile(module)

    if training:
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9)

        def step() -> object:
            optimizer.zero_grad(set_to_none=True)
            with options.autocast():
                loss = module(x).float().square().mean()
            loss.backward()
            optimizer.step()
            return loss
    else:
        def step() -> object:
            with torch.inference_mode(), options.autocast():
                return module(x)

    return Workload(module, eager, x, step)
