"""How to run what is measured: one `Options` object describes one deployment setting."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch

from bench.roofline import DTYPES
from bench.runtimes.registry import TORCH_RUNTIMES, check_runtime
from bench.targets import BenchInputError
from bench.timing import StopRule

MODES = ("inference", "train")


@dataclass(frozen=True, init=False)
class Options:
    """How to run what is measured. `runtime` is one of bench.runtimes.RUNTIMES; `impl` is its old name,
    still accepted (`Options(impl="fast")`, `options.impl`)."""

    device: str = "cpu"
    dtype: str = "fp32"  # fp32, or bf16 / fp16 through autocast (onnxruntime: fp32 only)
    channels_last: bool = False  # torch runtimes only
    compile: bool = False  # torch.compile: torch runtimes only
    mode: str = "inference"  # or "train": forward, backward, optimizer step (torch runtimes only)
    runtime: str = "reference"  # reference, fast (container.optimize), onnxruntime, openvino, aot (AOTInductor)
    threads: int | None = None
    stop: StopRule = field(default_factory=StopRule)

    def __init__(self, device: str = "cpu", dtype: str = "fp32", channels_last: bool = False, compile: bool = False,
                 mode: str = "inference", runtime: str = "reference", threads: int | None = None,
                 stop: StopRule | None = None, *, impl: str | None = None) -> None:
        values = dict(device=device, dtype=dtype, channels_last=channels_last, compile=compile, mode=mode,
                      runtime=runtime if impl is None else impl, threads=threads,
                      stop=StopRule() if stop is None else stop)
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def impl(self) -> str:
        """The runtime, by its old name."""
        return self.runtime

    @property
    def torch_runtime(self) -> bool:
        return self.runtime in TORCH_RUNTIMES

    def replace(self, **changes) -> "Options":
        if "impl" in changes:
            changes["runtime"] = changes.pop("impl")
        return replace(self, **changes)

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise BenchInputError(f"--dtype {self.dtype!r}: valid dtypes: {', '.join(DTYPES)}")
        if self.mode not in MODES:
            raise BenchInputError(f"--mode {self.mode!r}: valid modes: {', '.join(MODES)}")
        check_runtime(self.runtime)
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
        self._validate_runtime(device)
        if self.dtype != "fp32":
            try:
                with self.autocast():
                    torch.mm(torch.ones(2, 2, device=device), torch.ones(2, 2, device=device))
            except Exception as e:  # the device or build cannot run this dtype
                raise BenchInputError(f"--dtype {self.dtype}: not supported on {self.device} ({e})") from None

    def _validate_runtime(self, device: torch.device) -> None:
        """Settings that make no sense with the runtime: one line naming the flag."""
        if self.torch_runtime:
            return
        torch_only = ", ".join(TORCH_RUNTIMES)
        if self.compile:
            raise BenchInputError(f"--compile: torch.compile applies to the torch runtimes ({torch_only}), "
                                  f"not to --runtime {self.runtime}")
        if self.mode != "inference":
            raise BenchInputError(f"--mode {self.mode}: training runs on the torch runtimes ({torch_only}) only, "
                                  f"not on --runtime {self.runtime}")
        if self.channels_last:
            raise BenchInputError(f"--channels-last: a torch memory format; --runtime {self.runtime} picks its own "
                                  f"layout")
        if self.runtime == "onnxruntime" and self.dtype != "fp32":
            raise BenchInputError(f"--dtype {self.dtype}: --runtime onnxruntime runs the exported fp32 model "
                                  f"(fp32 only)")
        if self.runtime == "openvino" and device.type != "cpu":
            raise BenchInputError(f"--device {self.device}: --runtime openvino runs on the CPU here (--device cpu)")
        if self.runtime == "onnxruntime" and device.type == "cuda":
            import onnxruntime  # check_runtime imported it already

            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
                raise BenchInputError(f"--device {self.device}: --runtime onnxruntime needs its CUDA execution "
                                      f"provider (pip install onnxruntime-gpu)")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=DTYPES[self.dtype])

    def columns(self) -> dict[str, object]:
        return {"device": self.device, "dtype": self.dtype, "channels_last": self.channels_last,
                "compile": self.compile, "mode": self.mode, "runtime": self.runtime}

