"""The gate's measurement: worker processes, one per revision, measured in interleaved rounds."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bench.env import REPO_ROOT
from bench.regress.rows import DEFAULT_PAIRS, repo_relative
from bench.regress.suite_file import GateConfig
from bench.regress.worker import PASSES_ENV, SLOWDOWN_ENV
from bench.targets import BenchInputError

WORKER_FILE = Path(__file__).resolve().parent / "worker.py"
# glibc's malloc moves its mmap threshold with a process's allocation history, so two processes
# running the same code can differ by 20-30% in page faults and time (Container-Light at batch 1
# did here). A fixed threshold, and no trimming, make every worker allocate the same way. In-process,
# bench.timing.keep_freed_memory sets the same through mallopt; the environment is kept here too so
# that an --against revision older than that function is measured under the same allocator.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}


class WorkerProcess:
    """bench/regress/worker.py running against one tree (its cwd and first sys.path entry)."""

    def __init__(self, tree: Path, label: str, threads: int, inject: bool) -> None:
        self.tree, self.label = Path(tree).resolve(), label
        env = dict(os.environ)
        if not inject:
            env.pop(SLOWDOWN_ENV, None)
            env.pop(PASSES_ENV, None)
        env["PYTHONPATH"] = os.pathsep.join([str(self.tree), *filter(None, [env.get("PYTHONPATH")])])
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
        env.update(MALLOC_ENV)
        bootstrap = ("import runpy, sys; sys.argv = [sys.argv[1], sys.argv[2]]; "
                     "runpy.run_path(sys.argv[0], run_name='__main__')")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-c", bootstrap, str(WORKER_FILE), str(self.tree)],
                                        cwd=self.tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True, bufsize=1)

    def send(self, request: dict) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()

    def receive(self) -> dict:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            last = (self.stderr_tail().strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the {self.label} worker ({repo_relative(self.tree)}) died: {last}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"the {self.label} worker failed: {reply.get('error')}")
        return reply

    def request(self, request: dict) -> dict:
        self.send(request)
        return self.receive()

    def stderr_tail(self, lines: int = 15) -> str:
        self.stderr.seek(0)
        return "\n".join(self.stderr.read().splitlines()[-lines:])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.process.poll() is None:
                self.send({"cmd": "quit"})
                self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.stderr.close()


@dataclass(frozen=True)
class Round:
    """One row measured once on one side: the median over its pairs, and the raw times behind it."""

    normalised: float  # median of row time / geometric mean of the calibration times either side
    row_ms: float
    calibration_ms: float
    row_times_ms: tuple[float, ...] = ()
    calibration_times_ms: tuple[float, ...] = ()
    pair_ratios: tuple[float, ...] = ()

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Round:
        return cls(normalised=float(np.median(reply["normalised"])), row_ms=float(np.median(reply["row_times_ms"])),
                   calibration_ms=float(np.median(reply["calibration_times_ms"])),
                   row_times_ms=tuple(reply["row_times_ms"]),
                   calibration_times_ms=tuple(reply["calibration_times_ms"]), pair_ratios=tuple(reply["normalised"]))


@dataclass
class Side:
    """Everything measured on one revision."""

    label: str  # "current", "reference"
    commit: str
    deterministic: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    injected: dict[str, float | None] = field(default_factory=dict)  # slowdown injected to test the gate
    passes: dict[str, int] = field(default_factory=dict)  # ... as extra elementwise passes per call
    rounds: dict[str, list[Round]] = field(default_factory=dict)

    def normalised(self, row: str) -> list[float]:
        return [r.normalised for r in self.rounds.get(row, [])]

    def median_row_ms(self, row: str) -> float:
        return _median([r.row_ms for r in self.rounds.get(row, [])])

    def median_calibration_ms(self, row: str) -> float:
        return _median([r.calibration_ms for r in self.rounds.get(row, [])])

    def calibration_times_ms(self) -> list[float]:
        """Every round's calibration median, all rows (finite ones)."""
        return [r.calibration_ms for rounds in self.rounds.values() for r in rounds if math.isfinite(r.calibration_ms)]


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else math.nan


def say(console, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


def measure_sides(trees: dict[str, tuple[Path, str]], config: GateConfig, inject: str | None = "current",
                  pairs: int = DEFAULT_PAIRS) -> dict[str, Side]:
    """Measure the config's rows on every tree, in its `rounds` interleaved rounds, at its threads.

    `trees` maps a label to (tree, commit), one worker process each. In each round the rows come
    in a rotated order, and each row is measured by every tree in turn, the order of the trees
    alternating from row to row, so that a drift of the machine's speed lands on all sides alike.
    A measurement alternates the row and the calibration workload call by call
    (bench.timing.measure_interleaved, see worker.Worker.measure); its figure for the round is the
    median over its `pairs` + 1 row calls of row time / geometric mean of the calibration calls
    on either side.
    """
    rows, rounds, threads, console = config.rows, config.rounds, config.threads, config.console
    workers = {label: WorkerProcess(tree, label, threads, inject=(label == inject))
               for label, (tree, _) in trees.items()}
    sides = {label: Side(label, commit) for label, (_, commit) in trees.items()}
    try:
        setup = {"cmd": "setup", "rows": [r.spec() for r in rows], "threads": threads}
        start = time.perf_counter()
        for worker in workers.values():  # set up every side at once: nothing is timed yet
            worker.send(setup)
        for label, worker in workers.items():
            reply = worker.receive()
            sides[label].deterministic, sides[label].errors = reply["rows"], reply["errors"]
            sides[label].injected = reply.get("injected", {})
            sides[label].passes = reply.get("passes", {})
        say(console, f"[dim]set up {len(rows)} rows in {len(workers)} worker process(es) in "
                     f"{time.perf_counter() - start:.0f} s; timing {rounds} rounds[/dim]")
        labels = list(trees)
        for r in range(rounds):
            start = time.perf_counter()
            order = [rows[(i + r) % len(rows)] for i in range(len(rows))]
            for i, row in enumerate(order):
                for label in (labels if (r + i) % 2 == 0 else labels[::-1]):
                    if row.name not in sides[label].deterministic:
                        continue
                    reply = workers[label].request({"cmd": "measure", "row": row.name, "pairs": pairs})
                    sides[label].rounds.setdefault(row.name, []).append(Round.from_reply(reply))
            say(console, f"[dim]round {r + 1}/{rounds}: {time.perf_counter() - start:.1f} s[/dim]")
    except RuntimeError as error:
        raise BenchInputError(str(error).splitlines()[0]) from None
    finally:
        for worker in workers.values():
            worker.close()
    return sides


# --- another revision in a temporary worktree -------------------------------------------------------


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def revision_tree(rev: str) -> Iterator[tuple[Path, str]]:
    """`rev` checked out (detached) in a temporary git worktree, removed again whatever happens."""
    try:
        found = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except (OSError, subprocess.SubprocessError) as e:
        raise BenchInputError(f"--against {rev}: cannot run git ({e})") from None
    if found.returncode != 0 or not found.stdout.strip():
        raise BenchInputError(f"--against {rev!r}: not a commit in this repository")
    commit = found.stdout.strip()
    parent = Path(tempfile.mkdtemp(prefix="container-bench-against-"))
    tree = parent / "tree"
    added = _git("worktree", "add", "--detach", "--quiet", str(tree), commit)
    try:
        if added.returncode != 0:
            raise BenchInputError(f"--against {rev}: git worktree add failed: "
                                  f"{(added.stderr.strip().splitlines() or ['?'])[-1]}")
        yield tree, commit[:12]
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(parent, ignore_errors=True)
        _git("worktree", "prune")
