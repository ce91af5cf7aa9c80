"""`python -m bench export`: the deployable artifact whose latency bench measures, with what it is and how fast
it ran here.

For each target, batch size, dtype and runtime, a directory <out>/<target>-b<batch>-<dtype>/<runtime>/ with

    the artifact     model.onnx (onnxruntime), model.xml + model.bin (openvino: IR), model.pt2 (aot)
    input.npy        the example input (float32, the batch included)
    expected.npy     the reference module's output on it
    manifest.json    the config, shapes, dtype, versions, machine, latency and error (see docs/export.md)

The artifact is the runtime's own conversion, the one a run times (bench.runtimes); it is then loaded back from
the file with the runtime's own loader, its output checked against the reference module's on the same input
(bench.runtimes.check), and timed the way a row is (bench.profiler.time_steps: calibrated, so the latency also
comes at the machine's reference speed). A directory is written apart and renamed into place once complete,
so a run killed half-way leaves the earlier artifact or the new one, never half of one.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.formatting import fixed, number
from bench.env import environment, fingerprint, machine_summary, package_versions
from bench.kit import atomic_path, table_console, write_json
from bench.options import Options
from bench.profiler import time_steps
from bench.runtimes import (RUNTIMES, Converted, ExportFailed, check_runtime, max_rel_error, reference_output,
                            tolerance)
from bench.runtimes.aot_runtime import compile_aot_package, load_package
from bench.runtimes.onnx_runtime import load_session, onnx_model, session_converted, session_settings
from bench.runtimes.openvino_runtime import compile_model, compiled_converted, openvino_model, openvino_properties
from bench.targets import BenchInputError, BlockTarget, ModuleTarget, NetworkTarget, Target
from bench.workload import build_reference

SCHEMA = "container-bench-export/1"
SEED = 0  # the seed of the reference module's weights and of the example input, as in a run
# runtime -> the files of its artifact, the first the one its loader opens
ARTIFACTS: dict[str, tuple[str, ...]] = {"onnxruntime": ("model.onnx",), "openvino": ("model.xml", "model.bin"),
                                         "aot": ("model.pt2",)}
INPUT_FILE, EXPECTED_FILE, MANIFEST_FILE = "input.npy", "expected.npy", "manifest.json"


def exporting_runtimes() -> list[str]:
    """The registered runtimes that have an artifact, in RUNTIMES' order."""
    return [runtime for runtime in RUNTIMES if runtime in ARTIFACTS]


def check_export_runtime(name: str) -> None:
    """Raise BenchInputError (one line naming --runtime and the runtimes that export) unless `name` is a runtime
    with an artifact whose packages are installed. The torch runtimes run the module itself: nothing to export."""
    exporting = ", ".join(exporting_runtimes())
    if name in RUNTIMES and name not in ARTIFACTS:
        raise BenchInputError(f"--runtime {name}: runs the torch module itself, no artifact to export; runtimes "
                              f"that export: {exporting}")
    if name not in RUNTIMES:
        raise BenchInputError(f"--runtime {name!r}: not a runtime; runtimes that export: {exporting}")
    check_runtime(name)


@dataclass(frozen=True)
class Artifact:
    """One artifact written (or not: status export_failed, with the reason)."""

    directory: Path
    runtime: str
    target: str
    batch_size: int
    dtype: str
    status: str  # ok, mismatch (its output is off the reference's by more than the tolerance), export_failed
    reason: str = ""
    max_rel_error: float | None = None
    latency_median_ms: float | None = None
    latency_norm_ms: float | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def directory_name(target: Target, batch_size: int, dtype: str) -> str:
    """<target>-b<batch>-<dtype>, the target's name with anything but letters, digits and ._@- made "_" (a
    config file's path, a module:callable spec)."""
    slug = re.sub(r"[^A-Za-z0-9._@-]+", "_", target.name).strip("._") or "target"
    return f"{slug}-b{batch_size}-{dtype}"


def export_artifacts(targets: Sequence[Target], batch_sizes: Sequence[int], variants: Sequence[Options],
                     out: str | os.PathLike, *, progress: bool = True, console: Console | None = None,
                     command: str = "") -> list[Artifact]:
    """Write the artifact of every target at every batch size for every variant (a runtime and dtype, on the
    CPU) under `out`, with its manifest, and print a table of them. Raises BenchInputError for a variant
    that cannot export, or two targets that would share a directory."""
    for options in variants:
        check_export_runtime(options.runtime)
        options.validate()
    jobs = [(target, batch, options) for target in targets for batch in dict.fromkeys(batch_sizes)
            for options in variants]
    seen: dict[str, str] = {}
    for target in targets:
        name = directory_name(target, 1, "fp32")
        if seen.setdefault(name, target.name) != target.name:
            raise BenchInputError(f"{seen[name]} and {target.name}: would be written to the same directory")
    console = console or table_console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("exporting", total=len(jobs))
        for target, batch, options in jobs:
            bar.update(task, description=f"{target.name} b{batch} {options.dtype}: {options.runtime}")
            artifacts.append(export_artifact(target, batch, options, out, command=command))
            bar.advance(task)
        bar.update(task, description="done")
    print_artifacts(artifacts, console)
    return artifacts


def export_artifact(target: Target, batch_size: int, options: Options, out: Path, *, command: str = "") -> Artifact:
    """Write one artifact and its manifest under `out` (see the module's docstring)."""
    threads = options.threads or torch.get_num_threads()
    options = options.replace(threads=threads)
    directory = out / directory_name(target, batch_size, options.dtype) / options.runtime
    artifact = dict(directory=directory, runtime=options.runtime, target=target.name, batch_size=batch_size,
                    dtype=options.dtype)
    # As a run builds a row's workload (bench.workload.convert_workload): the reference output first.
    reference, x = build_reference(target, batch_size, options, SEED)
    expected = reference_output(reference, x, False, options.autocast())
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{options.runtime}.", dir=directory.parent))
    try:
        start = time.perf_counter()
        written = _write(options.runtime, reference, x, options, staging)
        convert_s = written.pop("convert_s", time.perf_counter() - start)
        np.save(staging / INPUT_FILE, x.detach().cpu().float().numpy())
        np.save(staging / EXPECTED_FILE, expected.numpy())
        start = time.perf_counter()
        loaded = _load(options.runtime, staging, x, options)
        load_s = time.perf_counter() - start
        error = max_rel_error(loaded.output(), expected)
    except ExportFailed as failure:
        shutil.rmtree(staging, ignore_errors=True)
        return Artifact(**artifact, status="export_failed", reason=failure.reason)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    allowed = tolerance(options.dtype)
    status, reason, latency = "ok", "", None
    if not error <= allowed:
        status, reason = "mismatch", f"max relative error {error:.2e} > {allowed:.0e} ({options.dtype} tolerance)"
    try:
        if status == "ok":
            latency = time_steps([loaded.run], device=options.device, threads=threads, stop=options.stop,
                                 label=f"{target.name} {options.runtime}", settle_s=[loaded.settle_s])[0].row()
        del loaded  # the runtime lets go of the files before they move
        env = environment(options.device, threads)
        manifest = {
            "schema": SCHEMA,
            "runtime": options.runtime,
            "files": {"artifact": list(ARTIFACTS[options.runtime]), "input": INPUT_FILE, "expected": EXPECTED_FILE},
            "target": target_description(target),
            "batch_size": batch_size,
            "input_shape": list(x.shape),
            "input_dtype": "float32",
            "output_shape": list(expected.shape),
            "dtype": options.dtype,
            "seed": SEED,
            "device": options.device,
            "threads": threads,
            "runtime_settings": runtime_settings(options),
            **written,
            "convert_s": convert_s,
            "load_s": load_s,
            "status": status,
            "reason": reason,
            "max_rel_error": error,
            "tolerance": allowed,
            "latency": latency,
            "stop_rule": dataclasses.asdict(options.stop),
            "versions": package_versions(),
            "machine": {"fingerprint": fingerprint(options.device, threads), "summary": machine_summary(env),
                        "environment": env},
            "command": command,
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(staging / MANIFEST_FILE, _finite(manifest))
        _publish(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Artifact(**artifact, status=status, reason=reason, max_rel_error=error,
                    latency_median_ms=latency["latency_median_ms"] if latency else None,
                    latency_norm_ms=latency["latency_norm_ms"] if latency else None)


def target_description(target: Target) -> dict[str, Any]:
    """What was exported, enough to build it again: a network's NetworkConfig fields, a block's constructor
    arguments, a module's package.module:callable spec and one sample's shape."""
    if isinstance(target, NetworkTarget):
        return {"type": "network", "name": target.name, "config": target.config.to_dict()}
    if isinstance(target, BlockTarget):
        return {"type": "block", "name": target.name,
                "config": dataclasses.asdict(target) | {"heads": target.num_heads}}
    assert isinstance(target, ModuleTarget)
    return {"type": "module", "name": target.name, "module": target.spec, "sample_shape": list(target.sample_shape)}


def runtime_settings(options: Options) -> dict[str, Any]:
    """The settings the artifact was loaded and timed with: what a user sets to run it the same way."""
    if options.runtime == "onnxruntime":
        return {"providers": ["CPUExecutionProvider"], **session_settings(options)}
    if options.runtime == "openvino":
        return {"device": "CPU", "properties": openvino_properties(options)}
    return {"torch_num_threads": options.threads}


def _write(runtime: str, module: torch.nn.Module, x: torch.Tensor, options: Options, directory: Path) -> dict:
    """Write `module`'s artifact for `runtime` into `directory`, converted as a run converts it; returns what
    the manifest says of it beyond the common fields. Raises ExportFailed (one line)."""
    if runtime == "onnxruntime":
        with atomic_path(directory / "model.onnx") as tmp:
            tmp.write_bytes(onnx_model(module, x))
        return {}
    if runtime == "openvino":
        import openvino as ov  # here: bench imports without it

        # compress_to_fp16=False: the weights as converted and timed (save_model halves them by default)
        ov.save_model(openvino_model(module, x), str(directory / "model.xml"), compress_to_fp16=False)
        return {}
    package = compile_aot_package(module, x, options)
    shutil.copyfile(package.path, directory / "model.pt2")
    return {"convert_s": package.convert_s,
            "aot": {"source": package.source, "cached": package.cached, "fallback": package.fallback}}


def _load(runtime: str, directory: Path, x: torch.Tensor, options: Options) -> Converted:
    """The artifact in `directory` loaded by the runtime's own loader, bound to `x` as a run binds it."""
    if runtime == "onnxruntime":
        return session_converted(load_session(str(directory / "model.onnx"), options), x, options, math.nan)
    if runtime == "openvino":
        return compiled_converted(compile_model(directory / "model.xml", options), x, math.nan)
    runner = load_package(directory / "model.pt2", x.device)  # torch._inductor.aoti_load_package

    def run() -> object:  # as bench.runtimes.aot_runtime.convert_aot calls it
        return runner(x)
    return Converted("aot", run, run, math.nan, torch_allocates=True)


def _publish(staging: Path, directory: Path) -> None:
    """Move the complete `staging` directory to `directory`, replacing an earlier one."""
    old = None
    if directory.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
        os.replace(directory, old / directory.name)
    os.replace(staging, directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _finite(value: Any) -> Any:
    """JSON without NaN or infinity (None in their place)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_artifacts(artifacts: Sequence[Artifact], console: Console) -> None:
    table = Table(title="artifacts")
    for name, justify in (("path", "left"), ("runtime", "left"), ("status", "left"), ("latency (ms)", "right"),
                          ("at reference speed (ms)", "right"), ("max rel error", "right")):
        table.add_column(name, justify=justify)
    for a in artifacts:
        status = a.status if a.ok else f"[red]{a.status}[/]: {a.reason}"
        table.add_row(str(a.directory), a.runtime, status, fixed(a.latency_median_ms, 3), fixed(a.latency_norm_ms, 3),
                      number(a.max_rel_error, 2))
    console.print(table)


__all__ = ["ARTIFACTS", "Artifact", "SCHEMA", "check_export_runtime", "directory_name", "export_artifact",
           "export_artifacts", "exporting_runtimes", "print_artifacts", "target_description"]
