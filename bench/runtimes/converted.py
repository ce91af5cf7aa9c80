"""What a conversion gives (`Converted`), how it fails (`ExportFailed`), and the helpers the converters share."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn

# Loggers of the exporters: their warnings (torchvision ops skipped, graph breaks) are not the user's business.
_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript", "openvino")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines that name what failed, in the exporters' long messages; the first line is taken otherwise.
_TELLING = ("no onnx function found", "no conversion rule found", "unsupported", "not supported")


class ExportFailed(RuntimeError):
    """A network that the runtime could not convert; the message is one line saying why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Converted:
    """A network converted once for one runtime, bound to its example input.

    `run()` computes on the example input and returns what the runtime returns (the step that is
    timed: in train mode a whole training step); `output()` gives the forward output as a torch
    tensor, for the check against the reference module.
    """

    runtime: str
    run: Callable[[], object]
    output: Callable[[], torch.Tensor]
    convert_s: float  # converting (export + compile); with torch.compile the compiling first call; nan: none
    torch_allocates: bool  # True where torch's allocator holds the memory of a call (the torch runtimes)
    module: nn.Module | None = None  # the torch module that runs, uncompiled (torch runtimes); None: not torch
    # How long the runtime's idle worker threads keep a core busy after a call (ONNX Runtime spins by default):
    # a calibrated measurement lets them settle, running the calibration workload untimed, before it times
    # anything else, which they would slow (bench.timing.measure_rounds).
    settle_s: float = 0.0


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def one_line(error: BaseException) -> str:
    """`Type: what failed`, on one line: the line of the message naming the failure, else its first line."""
    lines = [line.strip(" -#\t") for line in _ANSI.sub("", str(error)).splitlines()]
    lines = [line for line in lines if line]
    telling = [line for line in lines if any(t in line.lower() for t in _TELLING)]
    line = (telling or lines or [""])[0]
    line = re.sub(r"^<class '[\w.]+'>: ", "", line)
    reason = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence an exporter: its warnings, its loggers below ERROR, and what it prints on stdout."""
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
