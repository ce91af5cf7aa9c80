"""One revision's side of the regression gate: a worker process that measures the suite on request.

bench/regress.py starts one worker per revision under test: the working tree (baseline mode), or
the working tree and a temporary worktree of another revision (`--against REV`). The parent runs
this very file with the tree under test first on sys.path (cwd and PYTHONPATH), so `container` and
`bench` are that revision's code while this protocol is the same for both sides. The worker uses
only the public bench API (profile, build_workload, measure_latency, BlockTarget, NetworkTarget,
Options, StopRule), so it runs against any revision that has it.

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
those, the same extra work in every run (bench/gate_eval.py does this). FLOPs, parameters and
allocator peaks are not affected: only time is.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path

SLOWDOWN_ENV = "CONTAINER_BENCH_REGRESS_SLOWDOWN"
PASSES_ENV = "CONTAINER_BENCH_REGRESS_SLOWDOWN_PASSES"  # JSON {row: passes}: the same extra work every run
DETERMINISTIC = ("params", "macs_fvcore", "cpu_alloc_peak_bytes")
CALLS_PER_BLOCK = 3  # measure_latency: a cold call and two warm-ups; Timer.timeit(1): two warm-ups and the timed call


def _tree_check(tree: Path) -> dict[str, str]:
    """The packages must come from the tree under test, not from an installed copy elsewhere."""
    import bench
    import container

    files = {"bench": str(Path(bench.__file__).resolve()), "container": str(Path(container.__file__).resolve())}
    for name, file in files.items():
        if not file.startswith(str(tree) + os.sep):
            raise RuntimeError(f"{name} was imported from {file}, not from the tree under test {tree}: "
                               f"that revision has no importable {name}/ package")
    for attr in ("profile", "build_workload", "measure_latency", "BlockTarget", "NetworkTarget", "Options",
                 "StopRule"):
        if not hasattr(bench, attr):
            raise RuntimeError(f"bench.{attr}: missing in the tree under test {tree}; the gate needs the "
                               f"public bench API")
    return files


def calibration_step():
    """The fixed calibration workload: one GEMM (compute-bound) and one depthwise conv (memory-bound).

    It runs interleaved with every row, so a uniformly faster or slower machine of the same kind,
    or a busier moment, changes both alike and leaves their ratio alone. It takes about half as
    long as a block row, so that time slicing by other processes hits both alike.
    """
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1234)
    a = torch.randn(768, 768, generator=g)
    b = torch.randn(768, 768, generator=g)
    x = torch.randn(1, 128, 112, 112, generator=g)
    w = torch.randn(128, 1, 5, 5, generator=g)

    def step():
        with torch.inference_mode():
            torch.mm(a, b)
            return F.conv2d(x, w, padding=2, groups=128)

    return step


def _target(spec: dict):
    import bench

    if spec["target"] == "block":
        return bench.BlockTarget(spec["kind"], spec["dim"], spec["side"])
    if spec["target"] == "network":
        return bench.NetworkTarget.named(spec["network"])
    raise ValueError(f"unknown target type {spec['target']!r}")


class Worker:
    def __init__(self, tree: Path) -> None:
        self.tree = tree
        self.steps: dict[str, object] = {}
        self.calibration = None
        self.threads = 1
        self.injected: dict[str, float | None] = {}
        self.passes: dict[str, int] = {}

    def _latency(self, fn, stop):
        import bench

        return bench.measure_latency(fn, device="cpu", threads=self.threads, stop=stop, warmup_s=0.0,
                                     min_block_s=0.0)

    def setup(self, request: dict) -> dict:
        import torch

        import bench

        files = _tree_check(self.tree)
        self.threads = int(request["threads"])
        torch.set_num_threads(self.threads)
        slowdown = float(os.environ.get(SLOWDOWN_ENV, "0") or 0)
        fixed = {k: int(v) for k, v in json.loads(os.environ.get(PASSES_ENV, "") or "{}").items()}
        # profile() times the row too; a token stop rule keeps that short (its figure is not used).
        options = bench.Options(threads=self.threads,
                                stop=bench.StopRule(rel_iqr=1.0, min_runs=1, min_time_s=0.0, max_time_s=0.01))
        self.calibration = calibration_step()
        rows, errors = {}, {}
        for spec in request["rows"]:
            name, batch = spec["name"], int(spec["batch"])
            try:
                target = _target(spec)
                # Deterministic figures through bench.profile, the one measuring path.
                row = bench.profile(target, batch, options, flops=True, memory=True)
                rows[name] = {k: row.get(k) for k in DETERMINISTIC}
                step = bench.build_workload(target, batch, options).step
                if slowdown > 0 or name in fixed:
                    step, self.passes[name], self.injected[name] = self._inject(
                        name, step, target, batch, slowdown, fixed.get(name))
                self.steps[name] = step
            except Exception as error:  # a row this revision cannot build: reported, not fatal
                errors[name] = f"{type(error).__name__}: {error}".splitlines()[0]
        return {"rows": rows, "errors": errors, "files": files, "threads": self.threads,
                "injected": self.injected, "passes": self.passes}

    def _inject(self, name: str, step, target, batch: int, slowdown: float, fixed: int | None):
        """Wrap `step` with extra in-place elementwise passes over an input-sized buffer.

        With `fixed` passes (from PASSES_ENV) the extra work is the same in every run, as a real
        regression would be; otherwise the count is set here so that the slowdown, measured
        interleaved (slowed call against plain calls either side), is about `slowdown`.
        Returns the wrapped step, the passes and the measured slowdown (None when fixed).
        """
        import numpy as np
        import torch

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
                plain_ratios += self._alternate(step, self.calibration, pairs=8)[2]
                slowed_ratios += self._alternate(slowed, self.calibration, pairs=8)[2]
            realised = float(np.median(slowed_ratios) / np.median(plain_ratios)) - 1.0
            if realised <= 0 or abs(realised - slowdown) < 0.1 * slowdown:
                break
            passes = max(1, round(passes * slowdown / realised))
        return slowed, passes, realised

    def _alternate(self, first, second, pairs: int, max_time_s: float = 60.0):
        """`pairs` + 1 timed calls of `first`, each between timed calls of `second`.

        One bench.measure_latency run of a callable that switches between `second` and `first`
        every CALLS_PER_BLOCK calls: measure_latency starts with a cold call and two warm-ups
        (`second`), then times blocks of one call, each after two warm-up calls of its own
        (Timer.timeit(1)), so its timed calls alternate first, second, first, ..., each timed
        after two calls of the same workload. The call log checks that pattern. Returns the
        times of `first`, those of `second`, and each `first` time over the geometric mean of
        the `second` times either side.
        """
        import bench

        log: list[int] = []

        def alternating():
            kind = (len(log) // CALLS_PER_BLOCK) % 2  # 0: second, 1: first
            log.append(kind)
            return first() if kind else second()

        stop = bench.StopRule(rel_iqr=math.inf, min_runs=2 * pairs + 1, min_time_s=0.0, max_time_s=max_time_s)
        stats = self._latency(alternating, stop)
        times = list(stats.times_ms)
        timed_kinds = log[CALLS_PER_BLOCK - 1::CALLS_PER_BLOCK][1:]
        if (stats.number_per_run != 1 or len(log) != CALLS_PER_BLOCK * (len(times) + 1)
                or timed_kinds != [(i + 1) % 2 for i in range(len(times))]):
            raise RuntimeError(f"measure_latency called the workload {len(log)} times for {len(times)} timed "
                               f"blocks of {stats.number_per_run}; the interleaving assumes {CALLS_PER_BLOCK} "
                               f"calls per block of 1")
        first_ms, second_ms = times[0::2], times[1::2]  # first, second, first, ..., [first]
        ratios = []
        for i, t in enumerate(first_ms):
            around = [c for c in (second_ms[i - 1] if i > 0 else None,
                                  second_ms[i] if i < len(second_ms) else None) if c]
            if around:
                ratios.append(t / math.sqrt(math.prod(around)) if len(around) == 2 else t / around[0])
        return first_ms, second_ms, ratios

    def measure(self, request: dict) -> dict:
        """`pairs` + 1 timed calls of the row, each between timed calls of the calibration workload."""
        name = request["row"]
        if name not in self.steps:
            raise KeyError(f"row {name!r} was not set up")
        row_ms, calibration_ms, normalised = self._alternate(self.steps[name], self.calibration,
                                                             int(request.get("pairs", 3)),
                                                             float(request.get("max_time_s", 60.0)))
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
