"""`aot`: the network compiled ahead of time by AOTInductor into a .pt2 package, run by torch's package loader.

torch.export.export (under torch.inference_mode), torch._inductor.aoti_compile_and_package (freezing, the C++
wrapper), torch._inductor.aoti_load_package; `run()` calls the loaded package on the example input.

Candidates. The package is compiled from whichever module compiles to the faster code: the reference module
and, where container.optimize applies (a container block or network), the fast module on its inference path,
its folded constants fixed before the export (the path torch.compile takes: plain aten ops, since the
prepacked oneDNN operators of the eager fast path are opaque to export; Inductor's freezing prepacks on its
own). Both are compiled and timed briefly by bench.timing.measure_rounds (CHOOSE_STOP), and the faster one is
the package; with one candidate, that one. A fast module that does not export, compile, run or match the
reference falls back to the reference, with the reason kept (AotPackage.fallback, and the choice's JSON).

Precision. An fp32 row exports the module as it is; a bf16 / fp16 row exports it inside torch.autocast of the
row's dtype (torch.export keeps the region, wrap_with_autocast), so the package computes what the reference
computes under the row's autocast.

Cache: nothing compiles twice. Packages live in bench.kit.results_root() / "cache" / "aot" (git-ignored), each
named by a hash of what determines it: the exported program (the code of its graphs, its signature, and a
digest of its weights and constants), the input's shape (so the batch), dtype and device, the row's dtype, the
torch version, the machine's fingerprint (bench.env.fingerprint: CPU model and ISA, cores, GPU) and the compile
recipe. The choice between the candidates is a small JSON beside them, keyed by the candidates' packages and
the thread count (which the timing depends on), so a cache hit neither compiles nor times again. Every file is
written atomically (bench.kit.atomic_path).

convert_s: on a miss, exporting, compiling and timing the candidates and loading the package; on a cache hit,
the hit's own cost: exporting the candidates (which finds the key) and loading the package (AotPackage.cached,
and the choice's JSON keeps the compile times).

Converted.torch_allocates is True: the package allocates its buffers through torch's allocator (CPU, or the
CUDA caching allocator), where bench.memory reads the allocator peak of a call.

Train mode: an AOTInductor package runs inference only: ExportFailed. CUDA (options.device cuda): the module and
the input are on the device, the package is compiled for it (Triton kernels) and loaded on the input's device.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn as nn

import container
from bench.env import fingerprint
from bench.kit import atomic_path, results_root, write_json
from bench.runtimes.check import max_rel_error, reference_output, tolerance
from bench.runtimes.converted import Converted, ExportFailed, is_out_of_memory, one_line, quiet
from bench.timing import StopRule, measure_rounds

if TYPE_CHECKING:  # annotations only: bench.options imports bench.runtimes.registry
    from bench.options import Options

# What the packages are compiled with; part of every cache key (a change compiles afresh).
INDUCTOR_CONFIGS: dict[str, Any] = {"freezing": True, "cpp_wrapper": True}
# bench.ops.profile's twin of a package: the same program, a profiler record around every kernel and extern call.
KERNEL_PROFILE_CONFIGS: dict[str, Any] = {**INDUCTOR_CONFIGS, "cpp.enable_kernel_profile": True}
RECIPE_VERSION = 1
# The brief timing that picks a candidate: a clear winner shows within a second; a near tie either way is fine.
CHOOSE_STOP = StopRule(rel_iqr=0.05, min_runs=3, min_time_s=0.1, max_time_s=1.0)


@dataclass(frozen=True)
class AotPackage:
    """A compiled AOTInductor package (a .pt2 file in the cache) and where it came from."""

    path: Path  # the .pt2 in the cache; copy it to deploy, load it with torch._inductor.aoti_load_package
    source: str  # which module it was compiled from: "reference" or "fast" (container.optimize)
    convert_s: float  # seconds this call took (see the module docstring: a hit costs the export and look-up)
    cached: bool  # True: nothing compiled in this call (every candidate's package was in the cache)
    fallback: str = ""  # why the fast module is not a candidate, where it applies and failed; "" otherwise


@dataclass(frozen=True)
class _Candidate:
    source: str
    program: Any  # torch.export.ExportedProgram
    key: str


def cache_dir() -> Path:
    """Where packages and choices live: results_root()/cache/aot."""
    return results_root() / "cache" / "aot"


def compile_aot_package(module: nn.Module, x: torch.Tensor, options: Options) -> AotPackage:
    """The AOTInductor package of `module` (the reference, in eval mode) on `x` for the row's settings: from the
    cache, else compiled from the faster of the candidates (module docstring). Raises ExportFailed (one line)
    where the reference does not export or compile, or in train mode."""
    return _package(module, x, options)[0]


def _package(module: nn.Module, x: torch.Tensor, options: Options) -> tuple[AotPackage, dict[str, _Candidate]]:
    start = time.perf_counter()
    candidates, fallback = _candidates(module, x, options)
    choice_path = cache_dir() / f"choice-{_choice_key(candidates, x, options)}.json"
    choice = _read_choice(choice_path, candidates)
    if choice is not None:
        source = choice["source"]
        return AotPackage(_package_path(candidates[source].key), source, time.perf_counter() - start, cached=True,
                          fallback=fallback or choice.get("fallback", "")), candidates
    compiled: dict[str, float | None] = {}  # source -> compile seconds (None: found in the cache)
    for source, candidate in candidates.items():
        try:
            compiled[source] = _compile(candidate, INDUCTOR_CONFIGS)
        except ExportFailed as failure:
            if source == "reference":
                raise
            fallback = f"{source}: {failure.reason}"
    timings: dict[str, float] = {}
    if len(compiled) > 1:
        timings, fallback = _time_candidates(module, x, options, candidates, fallback)
    chosen = min(timings, key=timings.__getitem__) if timings else "reference"
    convert_s = time.perf_counter() - start
    write_json(choice_path, {
        "source": chosen, "package": _package_path(candidates[chosen].key).name, "fallback": fallback,
        "candidates": {s: {"package": _package_path(c.key).name, "compile_s": compiled.get(s),
                           "median_ms": timings.get(s)} for s, c in candidates.items()},
        "convert_s": convert_s, "threads": _threads(options), "torch_version": torch.__version__,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    cached = all(seconds is None for seconds in compiled.values())
    package = AotPackage(_package_path(candidates[chosen].key), chosen, convert_s, cached=cached, fallback=fallback)
    return package, candidates


def convert_aot(module: nn.Module, x: torch.Tensor, options: Options) -> Converted:
    """`module` as an AOTInductor package (compile_aot_package), loaded and bound to `x`."""
    start = time.perf_counter()
    package = compile_aot_package(module, x, options)
    runner = load_package(package.path, x.device)

    def run() -> object:
        return runner(x)

    def output() -> torch.Tensor:
        return run()
    return Converted("aot", run, output, time.perf_counter() - start, torch_allocates=True)


def profiling_package(module: nn.Module, x: torch.Tensor, options: Options) -> Path:
    """The package bench times (compile_aot_package's choice), compiled again with a profiler record around each
    generated kernel and extern call (Inductor's cpp.enable_kernel_profile), which is the only difference: what
    bench.ops.profile reads. Cached like the packages."""
    package, candidates = _package(module, x, options)
    candidate = candidates[package.source]
    profiled = _Candidate(candidate.source, candidate.program, _digest({"package": candidate.key,
                                                                         "inductor": KERNEL_PROFILE_CONFIGS}))
    _compile(profiled, KERNEL_PROFILE_CONFIGS)
    return _package_path(profiled.key)


def load_package(path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package at `path` loaded on `device` (its index, for CUDA). Raises ExportFailed (one line)."""
    import torch._inductor  # here: bench imports without loading Inductor

    try:
        with quiet():
            return torch._inductor.aoti_load_package(str(path), device_index=-1 if device.index is None
                                                     else device.index)
    except Exception as error:
        if is_out_of_memory(error):
            raise
        raise ExportFailed(one_line(error)) from error


# --- candidates and keys --------------------------------------------------------------------------------------


def _candidates(module: nn.Module, x: torch.Tensor, options: Options) -> tuple[dict[str, _Candidate], str]:
    """The exported candidates by source, and why the fast module is not among them where it applies."""
    if options.mode == "train":
        raise ExportFailed("--mode train: an AOTInductor package runs inference only (--runtime aot)")
    module.eval()
    candidates = {"reference": _candidate("reference", module, x, options)}
    fallback = ""
    if isinstance(module, (container.ContainerBlock, container.ContainerNet)):
        try:
            candidates["fast"] = _candidate("fast", _frozen_fast(module, x, options), x, options)
        except Exception as error:
            if is_out_of_memory(error):
                raise
            fallback = f"fast: {error.reason if isinstance(error, ExportFailed) else one_line(error)}"
    return candidates, fallback


def _candidate(source: str, module: nn.Module, x: torch.Tensor, options: Options) -> _Candidate:
    program = _export(module, x, options)
    with torch.inference_mode():
        digest = _program_digest(program)
    key = _digest({"program": digest, "input": {"shape": list(x.shape), "dtype": str(x.dtype),
                                                "device": str(x.device)},
                   "batch": x.shape[0] if x.dim() else 1, "dtype": options.dtype, "torch": torch.__version__,
                   "machine": fingerprint(str(x.device)), "inductor": INDUCTOR_CONFIGS, "recipe": RECIPE_VERSION})
    return _Candidate(source, program, key)


class _Autocast(nn.Module):
    """`module` under torch.autocast (the row's dtype): what a bf16 / fp16 row computes."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(x)


def _export(module: nn.Module, x: torch.Tensor, options: Options):
    from bench.roofline import DTYPES  # here: bench.roofline is heavier than this module needs at import

    if options.dtype != "fp32":
        module = _Autocast(module, x.device.type, DTYPES[options.dtype])
    try:
        with quiet(), torch.inference_mode():
            return torch.export.export(module, (x,))
    except Exception as error:
        if is_out_of_memory(error):
            raise
        raise ExportFailed(one_line(error)) from error


def _frozen_fast(module: nn.Module, x: torch.Tensor, options: Options) -> nn.Module:
    """container.optimize's module with its folded constants computed now, eagerly, under the row's autocast,
    and fixed: export traces its inference path on them (its constant cache reads tensor storage, which the
    tracer's tensors have none of)."""
    fast = container.optimize(module)
    fold, frozen = fast.folded, {}

    def folded(lowp: torch.dtype | None = None):
        if lowp not in frozen:
            frozen[lowp] = fold(lowp)
        return frozen[lowp]

    fast.folded = folded  # an instance attribute: forward's self.folded(...) finds it first
    with torch.inference_mode(), options.autocast():
        fast(x)  # folds for the precision the row runs at
    return fast


def _program_digest(program) -> str:
    """The code of the program's graphs, its signature, and every weight's and constant's name, dtype, shape,
    strides and bytes."""
    h = hashlib.sha256()
    for name, graph in program.graph_module.named_modules():
        if isinstance(graph, torch.fx.GraphModule):
            h.update(f"{name}\n{graph.code}\n".encode())
    h.update(str(program.graph_signature).encode())
    tensors = {**{f"state:{k}": v for k, v in program.state_dict.items()},
               **{f"constant:{k}": v for k, v in program.constants.items()}}
    for name in sorted(tensors):
        value = tensors[name]
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach()
            h.update(f"{t.dtype}{tuple(t.shape)}{t.stride()}".encode())
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        else:
            h.update(type(value).__qualname__.encode())
    return h.hexdigest()


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _threads(options: Options) -> int:
    return options.threads or torch.get_num_threads()


def _choice_key(candidates: dict[str, _Candidate], x: torch.Tensor, options: Options) -> str:
    threads = _threads(options)
    return _digest({"packages": {s: c.key for s, c in candidates.items()}, "threads": threads,
                    "machine": fingerprint(str(x.device), threads)})


def _package_path(key: str) -> Path:
    return cache_dir() / f"{key}.pt2"


def _read_choice(path: Path, candidates: dict[str, _Candidate]) -> dict[str, Any] | None:
    """The stored choice, where it names a candidate whose package is in the cache; None otherwise."""
    try:
        choice = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    source = choice.get("source") if isinstance(choice, dict) else None
    if source not in candidates or not _package_path(candidates[source].key).is_file():
        return None
    return choice


# --- compiling and choosing -------------------------------------------------------------------------------------


def _compile(candidate: _Candidate, configs: dict[str, Any]) -> float | None:
    """Compile the candidate's package into the cache (atomically): its seconds, or None where it was there."""
    import torch._inductor  # here: bench imports without loading Inductor

    path = _package_path(candidate.key)
    if path.is_file():
        return None
    start = time.perf_counter()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file, quiet():
            torch._inductor.aoti_compile_and_package(candidate.program, package_path=file,
                                                     inductor_configs=dict(configs))
    except Exception as error:
        if is_out_of_memory(error):
            raise
        raise ExportFailed(one_line(error)) from error
    return time.perf_counter() - start


def _time_candidates(module: nn.Module, x: torch.Tensor, options: Options, candidates: dict[str, _Candidate],
                     fallback: str) -> tuple[dict[str, float], str]:
    """Each candidate's median ms (bench.timing.measure_rounds, CHOOSE_STOP), after checking the fast one against
    the reference module (a fast package that fails to load or run, or computes something else, is dropped, the
    reason kept)."""
    runners = {source: load_package(_package_path(c.key), x.device) for source, c in candidates.items()
               if source == "reference"}
    expected = reference_output(module, x, False, options.autocast())
    for source, candidate in candidates.items():
        if source == "reference":
            continue
        try:
            runner = load_package(_package_path(candidate.key), x.device)
            error = max_rel_error(runner(x), expected)
        except Exception as failure:
            if is_out_of_memory(failure):
                raise
            fallback = f"{source}: {failure.reason if isinstance(failure, ExportFailed) else one_line(failure)}"
            continue
        if not error <= tolerance(options.dtype):
            fallback = f"{source}: max relative error {error:.2e} > {tolerance(options.dtype):.0e}"
            continue
        runners[source] = runner
    if len(runners) == 1:
        return {}, fallback
    stats = measure_rounds([_call(runner, x) for runner in runners.values()], device=x.device,
                           threads=options.threads, stop=CHOOSE_STOP, warmup_s=0.1, min_block_s=0.02,
                           labels=list(runners))
    return {source: s.median_ms for source, s in zip(runners, stats)}, fallback


def _call(runner: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    return lambda: runner(x)


__all__ = ["CHOOSE_STOP", "AotPackage", "cache_dir", "compile_aot_package", "convert_aot", "load_package",
           "profiling_package"]
