"""`onnxruntime`: the network exported by torch.onnx.export(..., dynamo=True) and run by an InferenceSession.

In a run the model goes to the session in memory, never through a file; `python -m bench export`
writes the same bytes as model.onnx and times a session loaded from it. CPU execution provider, or CUDA's
where the row's device is cuda (onnxruntime-gpu). The session's own thread pool is pinned to the
row's thread count: intra-op threads = threads, one inter-op thread, sequential execution.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from bench.runtimes.converted import Converted, ExportFailed, one_line, quiet

if TYPE_CHECKING:  # annotations only: bench.options imports bench.runtimes.registry
    from bench.options import Options


# ONNX Runtime's intra-op worker threads spin after a call (its default, session.intra_op.allow_spinning = 1, which
# makes its batch-1 calls 20-40% faster here than with spinning off: kept, as deployed). For up to ~40 ms they take
# a core from whatever runs next: the calibration workload ran 2.5-5x slower right after an ORT call on the 2-core
# Xeon, at its usual speed 50 ms later.
SPIN_SETTLE_S = 0.05


def onnx_model(module: nn.Module, x: torch.Tensor) -> bytes:
    """`module` exported by torch.onnx.export(..., dynamo=True) on `x`: the serialized ModelProto, weights
    included (what a session loads, and what `python -m bench export` writes as model.onnx). Raises
    ExportFailed (one line)."""
    module.eval()
    try:
        with quiet():
            program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
            return program.model_proto.SerializeToString()
    except Exception as error:
        raise ExportFailed(one_line(error)) from error


def session_settings(options: Options) -> dict[str, object]:
    """The SessionOptions fields set for the row (threads pinned, sequential execution), by name."""
    return {"intra_op_num_threads": options.threads or torch.get_num_threads(), "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL"}


def load_session(model: bytes | str, options: Options, *, profile_prefix: str | None = None):
    """An onnxruntime.InferenceSession on `model` (a serialized ModelProto, or the path of a .onnx file) with
    the row's settings (session_settings). With `profile_prefix` the session also profiles
    (SessionOptions.enable_profiling, its trace written at that prefix: what bench.ops.profile reads).
    Raises ExportFailed (one line)."""
    import onnxruntime as ort  # here: bench imports without it

    cuda = torch.device(options.device).type == "cuda"
    try:
        settings = ort.SessionOptions()
        for name, value in session_settings(options).items():
            setattr(settings, name, getattr(ort.ExecutionMode, value) if name == "execution_mode" else value)
        settings.log_severity_level = 3  # errors only
        if profile_prefix is not None:
            settings.enable_profiling = True
            settings.profile_file_prefix = profile_prefix
        providers = ["CUDAExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        return ort.InferenceSession(model, settings, providers=providers)
    except Exception as error:
        raise ExportFailed(one_line(error)) from error


def onnxruntime_session(module: nn.Module, x: torch.Tensor, options: Options, *, profile_prefix: str | None = None):
    """`module` exported (onnx_model) and loaded, in memory, into an onnxruntime.InferenceSession with the
    row's settings (load_session); with `profile_prefix` it profiles too, which is the only difference from
    what bench times. Raises ExportFailed (one line)."""
    return load_session(onnx_model(module, x), options, profile_prefix=profile_prefix)


def convert_onnxruntime(module: nn.Module, x: torch.Tensor, options: Options) -> Converted:
    start = time.perf_counter()
    session = onnxruntime_session(module, x, options)
    return session_converted(session, x, options, time.perf_counter() - start)


def session_converted(session, x: torch.Tensor, options: Options, convert_s: float) -> Converted:
    """What bench times of an InferenceSession on `x`: one session.run, reading x in place."""
    device = torch.device(options.device)
    (source,), (sink,) = session.get_inputs(), session.get_outputs()
    if device.type == "cuda":
        binding = session.io_binding()  # input and output stay on the GPU, as torch's do
        binding.bind_input(source.name, "cuda", device.index or 0, _numpy_dtype(x), list(x.shape), x.data_ptr())
        binding.bind_output(sink.name, "cuda", device.index or 0)

        def run() -> object:
            session.run_with_iobinding(binding)
            return binding

        def output() -> torch.Tensor:
            run()
            return torch.from_numpy(binding.copy_outputs_to_cpu()[0].copy())
    else:
        feeds = {source.name: x.detach().numpy()}  # shares x's memory
        names = [sink.name]

        def run() -> object:
            return session.run(names, feeds)[0]

        def output() -> torch.Tensor:
            return torch.from_numpy(run().copy())
    return Converted("onnxruntime", run, output, convert_s, torch_allocates=False, settle_s=SPIN_SETTLE_S)


def _numpy_dtype(x: torch.Tensor):
    return torch.empty(0, dtype=x.dtype).numpy().dtype
