"""One revision's side of the regression gate: a worker process that measures the suite on request.

bench/regress/sides.py starts one worker per revision under test: the working tree (baseline
mode), or the working tree and a temporary worktree of another revision (`--against REV`). The
parent runs this very file with the tree under test first on sys.path (cwd and PYTHONPATH), so
`container` and `bench` are that revision's code, while this protocol and the timing instrument are
the gate's own for both sides: this file loads bench/timing.py of the tree it lives in by file path
(the one by-path import in the project, so that an older revision is timed exactly like this one).
From the tree under test it takes only the public bench API that every revision has: profile,
build_workload, BlockTarget, NetworkTarget, Options and StopRule.

Each row runs on a runtime (bench.runtimes): Options(runtime=...) where the tree's Options has that
field, Options(impl=...) for reference / fast in older trees. A row the tree cannot build (no such
runtime, a conversion that fails, an output that does not match the reference module's) is reported
as an error for that row, not a crash.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (anything the
measured code prints goes to stderr):
  {"cmd": "setup", "rows": [...], "threads": 1}  -> deterministic figures per row (bench.profile)
  {"cmd": "measure", "row": NAME, "pairs": 3}    -> interleaved row / calibration times in ms
  {"cmd": "quit"}

Slowdown injection, for measuring the gate itself (never set it in CI): with
CONTAINER_BENCH_REGRESS_SLOWDOWN=0.15 in its environment the worker runs extra in-place
elementwise passes over an input-sized buffer after every call of each row, as many as make the
row about 15% slower (found at setup by measuring, as the gate does). The setup reply gives the
counts; CONTAINER_BENCH_REGRESS_SLOWDOWN_PASSES='{"conv@320x14 b4": 123, ...}' injects exactly
those, the same extra work in every run (bench/regress/evaluation.py does this). FLOPs, parameters and
allocator peaks are not affected: only time is.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import numpy as np
import torch

import bench  # the tree under test's (its tree is first on sys.path), not necessarily the gate's
import container

SLOWDOWN_ENV = "CONTAINER_BENCH_REGRESS_SLOWDOWN"
PASSES_ENV = "CONTAINER_BENCH_REGRESS_SLOWDOWN_PASSES"  # JSON {row: passes}: the same extra work every run
DETERMINISTIC = ("params", "macs_fvcore", "cpu_alloc_peak_bytes")
WARMUP_CALLS = 2  # untimed calls of a workload before each of its timed calls (part of the gate's METHOD)
GATE_TIMING_FILE = Path(__file__).resolve().parents[1] / "timing.py"
REQUIRED_API = ("profile", "build_workload", "BlockTarget", "NetworkTarget", "Options", "StopRule")


def _load_gate_timing() -> ModuleType:
    """bench/timing.py of the gate's own tree, whichever tree `bench` on sys.path comes from."""
    name = "container_bench_gate_timing"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, GATE_TIMING_FILE)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the gate's timing module {GATE_TIMING_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


timing = _load_gate_timing()


def _tree_check(tree: Path) -> dict[str, str]:
    """The packages must come from the tree under test, not from an installed copy elsewhere."""
    files = {"bench": str(Path(bench.__file__).resolve()), "container": str(Path(container.__file__).resolve())}
    for name, file in files.items():
        if not file.startswith(str(tree) + os.sep):
            raise RuntimeError(f"{name} was imported from {file}, not from the tree under test {tree}: "
                               f"that revision has no importable {name}/ package")
    for attr in REQUIRED_API:
        if not hasattr(bench, attr):
            raise RuntimeError(f"bench.{attr}: missing in the tree under test {tree}; the gate needs the "
                               f"public bench API")
    return files


def calibration_step() -> Callable[[], torch.Tensor]:
    """The calibration workload of every measurement in the project (bench.timing.calibration_workload,
    from the gate's own timing module, so that both sides interleave the same one). It runs between the
    calls of every row, so a uniformly faster or slower machine of the same kind, or a busier moment,
    changes both alike and leaves their ratio alone."""
    return timing.calibration_workload("cpu")


def build_target(spec: dict):
    """The bench target of a row spec (Row.spec()), built by the tree under test.

    A network from a config file arrives as its config (JSON): both sides build the same architecture
    with their own code. A model's module:callable is imported from the tree under test (first on sys.path),
    so each side runs its own version of the user's module."""
    if spec["target"] == "block":
        shape = {k: spec[k] for k in ("heads", "kernel_size") if spec.get(k) is not None}
        return bench.BlockTarget(spec["kind"], spec["dim"], spec["side"], **shape)
    if spec["target"] == "network" and spec.get("config"):
        return bench.NetworkTarget(container.as_config(spec["config"]), spec["network"])
    if spec["target"] == "network":
        return bench.NetworkTarget.named(spec["network"])
    if spec["target"] == "model":
        module_name, _, attr = spec["model"].partition(":")
        module = importlib.import_module(module_name)
        return bench.ModuleTarget(getattr(module, attr)(), tuple(spec["input_shape"]), spec["model"])
    raise ValueError(f"unknown target type {spec['target']!r}")


def _accepts(cls: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False
    return keyword in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def row_options(runtime: str, **settings: Any) -> Any:
    """The tree under test's bench.Options for a row on `runtime`.

    Trees with runtimes take Options(runtime=...); older ones had Options(impl=...) with the values
    reference and fast, and nothing else."""
    if _accepts(bench.Options, "runtime"):
        return bench.Options(runtime=runtime, **settings)
    if runtime == "reference":
        return bench.Options(**settings)
    if runtime == "fast" and _accepts(bench.Options, "impl"):
        return bench.Options(impl=runtime, **settings)
    raise RuntimeError(f"runtime {runtime!r}: this revision's bench.Options has no runtime of that name")


def _flat(profiled: Any) -> dict[str, Any]:
    """bench.profile's result as a flat row: a typed result has .row(); older revisions return the dict."""
    return profiled.row() if hasattr(profiled, "row") else profiled


def normalise(first_ms: list[float], second_ms: list[float]) -> list[float]:
    """Each `first` time over the geometric mean of the `second` times either side of it."""
    ratios = []
    for i, t in enumerate(first_ms):
        around = [c for c in (second_ms[i - 1] if i > 0 else None,
                              second_ms[i] if i < len(second_ms) else None) if c]
        if around:
            ratios.append(t / math.sqrt(math.prod(around)) if len(around) == 2 else t / around[0])
    return ratios


class Worker:
    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.steps: dict[str, Callable[[], object]] = {}
        self.row_threads: dict[str, int] = {}
        self.calibration: Callable[[], object] | None = None
        self.threads = 1
        self.injected: dict[str, float | None] = {}
        self.passes: dict[str, int] = {}

    def setup(self, request: dict) -> dict:
        files = _tree_check(self.tree)
        self.threads = int(request["threads"])
        torch.set_num_threads(self.threads)
        slowdown = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
        fixed = {k: int(v) for k, v in json.loads(os.environ.get(PASSES_ENV, "") or "{}").items()}
        # profile() times the row too; a token stop rule keeps that short (its figure is not used).
        stop = bench.StopRule(rel_iqr=1.0, min_runs=1, min_time_s=0.0, max_time_s=0.01)
        self.calibration = calibration_step()
        rows, errors = {}, {}
        for spec in request["rows"]:
            name, batch = spec["name"], int(spec["batch"])
            threads = int(spec.get("threads") or self.threads)
            try:
                target = build_target(spec)
                options = row_options(spec.get("runtime", "reference"), threads=threads, stop=stop,
                                      **({"dtype": spec["dtype"]} if spec.get("dtype", "fp32") != "fp32" else {}))
                # Deterministic figures through bench.profile, the one measuring path; it checks a
                # runtime's output against the reference module's before timing it.
                row = _flat(bench.profile(target, batch, options, flops=True, memory=True))
                if row.get("status", "ok") != "ok":
                    reason = str(row.get("status_reason") or "").splitlines()
                    raise RuntimeError(f"status {row['status']}" + (f": {reason[0]}" if reason else ""))
                rows[name] = {k: row.get(k) for k in DETERMINISTIC}
                step = bench.build_workload(target, batch, options).step
                if slowdown > 0 or name in fixed:
                    step, self.passes[name], self.injected[name] = self._inject(
                        step, target, batch, slowdown, fixed.get(name), threads)
                self.steps[name], self.row_threads[name] = step, threads
            except Exception as error:  # a row this revision cannot build: reported, not fatal
                errors[name] = f"{type(error).__name__}: {error}".splitlines()[0]
        return {"rows": rows, "errors": errors, "files": files, "threads": self.threads,
                "injected": self.injected, "passes": self.passes}

    def _inject(self, step, target, batch: int, slowdown: float, fixed: int | None, threads: int):
        """Wrap `step` with extra in-place elementwise passes over an input-sized buffer.

        With `fixed` passes (from PASSES_ENV) the extra work is the same in every run, as a real
        regression would be; otherwise the count is set here so that the slowdown, measured
        interleaved (slowed call against plain calls either side), is about `slowdown`.
        Returns the wrapped step, the passes and the measured slowdown (None when fixed).
        """
        buffer = torch.randn(target.input_shape(batch))
        passes = fixed or 64

        def slowed():
            out = step()
            with torch.inference_mode():
                for _ in range(passes):
                    buffer.mul_(1.0)
            return out

        if fixed:
            return slowed, passes, None
        # What a pass costs depends on what ran before it (the buffer may or may not be in cache),
        # so the slowdown is measured as the gate measures it: plain and slowed row, each
        # alternating with the calibration workload, in turn.
        realised = 0.0
        for _ in range(4):
            plain_ratios, slowed_ratios = [], []
            for _ in range(3):
                plain_ratios += self._interleave(step, pairs=8, threads=threads)[2]
                slowed_ratios += self._interleave(slowed, pairs=8, threads=threads)[2]
            realised = float(np.median(slowed_ratios) / np.median(plain_ratios)) - 1.0
            if realised <= 0 or abs(realised - slowdown) < 0.1 * slowdown:
                break
            passes = max(1, round(passes * slowdown / realised))
        return slowed, passes, realised

    def _interleave(self, row, pairs: int, max_time_s: float = 60.0, threads: int | None = None):
        """`pairs` + 1 timed calls of `row`, each between timed calls of the calibration workload
        (timing.measure_interleaved), both at the row's thread count. Returns the row times, the
        calibration times, and each row time over the geometric mean of the calibration times either side."""
        assert self.calibration is not None, "set up first"
        times = timing.measure_interleaved(row, self.calibration, pairs, warmup_calls=WARMUP_CALLS, device="cpu",
                                           threads=threads or self.threads, max_time_s=max_time_s)
        first_ms, second_ms = list(times.first_ms), list(times.second_ms)
        return first_ms, second_ms, normalise(first_ms, second_ms)

    def measure(self, request: dict) -> dict:
        """`pairs` + 1 timed calls of the row, each between timed calls of the calibration workload."""
        name = request["row"]
        if name not in self.steps:
            raise KeyError(f"row {name!r} was not set up")
        row_ms, calibration_ms, normalised = self._interleave(self.steps[name], int(request.get("pairs", 3)),
                                                              float(request.get("max_time_s", 60.0)),
                                                              self.row_threads.get(name))
        return {"row": name, "row_times_ms": row_ms, "calibration_times_ms": calibration_ms,
                "normalised": normalised}


def serve(tree: Path) -> int:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # anything else printed goes to stderr
    sys.stdout = sys.stderr
    worker = Worker(tree)
    for line in sys.stdin:
        if not line.strip():
            continue
        request: dict = {}
        try:
            request = json.loads(line)
            cmd = request.get("cmd")
            if cmd == "quit":
                reply = {"ok": True}
            elif cmd == "setup":
                reply = {"ok": True} | worker.setup(request)
            elif cmd == "measure":
                reply = {"ok": True} | worker.measure(request)
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}"}
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
        if request.get("cmd") == "quit":
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(serve(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path.cwd().resolve()))
