"""The throughput regression gate: `python -m bench regress` (and `make regress`).

A fixed quick suite (every block kind at the 320@14x14 stage, batch 4, and Container-Light at
batch 1) is measured and compared with a reference: a baseline committed under
results/baselines/<machine fingerprint>.json, or another git revision measured in the same job.

- Deterministic figures (parameters, fvcore MACs, CPU allocator peak bytes) come from bench.profile
  and are gated exactly: every change is reported, an increase fails.
- Time is gated with statistics. Each row is timed in several rounds through bench.measure_latency,
  each round one run that alternates the row with a fixed calibration workload (a GEMM and a
  depthwise conv) call by call; the round's figure is the median of row time / geometric mean of
  the calibration calls either side. A row regresses when the Hodges-Lehmann estimate of the
  slowdown of that normalised time is at least `--min-effect` (10%) AND a one-sided Mann-Whitney
  U test says new > reference at `--alpha` (0.01). A small but significant change passes; a big
  but insignificant one passes too.
- Workers run with 1 intra-op thread and a fixed glibc malloc configuration (see MALLOC_ENV).
- Every run appends one line per row to results/runs/regress_history.jsonl;
  `python -m bench history` plots it.

Exit status: 0 nothing regressed, 1 something regressed (with a table of what and by how much),
2 bad input (no baseline, an unreadable one, an unknown revision, ...).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from scipy import stats

import container
from bench.env import REPO_ROOT, environment, fingerprint, git_commit
from bench.io import write_json, write_text
from bench.regress_worker import DETERMINISTIC, PASSES_ENV, SLOWDOWN_ENV
from bench.targets import STAGE_SHAPES, BenchInputError

SCHEMA = "container-bench-regress/1"
# How a normalised time is made: the calibration workload and the interleaving. Figures made by
# another method are not comparable; baselines and history records carry it.
METHOD = "interleaved-calls/gemm768+dwconv128x112x5/v1"
BASELINE_DIR = REPO_ROOT / "results" / "baselines"
HISTORY_PATH = REPO_ROOT / "results" / "runs" / "regress_history.jsonl"
WORKER_FILE = Path(__file__).resolve().parent / "regress_worker.py"

STAGE_DIM, STAGE_SIDE = STAGE_SHAPES[2][:2]  # 320@14x14: the stage that holds most of a network's blocks
BLOCK_BATCH = 4  # small, so that one timed round of a row is a fraction of a second
DEFAULT_ROUNDS = 8
DEFAULT_UPDATE_ROUNDS = 16  # a baseline is measured once and compared with many times: make it precise
DEFAULT_THREADS = 1  # on a shared CI box, more intra-op threads than free cores make timings meaningless
DEFAULT_MIN_EFFECT = 0.10
DEFAULT_ALPHA = 0.01
DEFAULT_PAIRS = 3  # timed row calls per round are pairs + 1, each between calibration calls
# glibc's malloc moves its mmap threshold with a process's allocation history, so two processes
# running the same code can differ by 20-30% in page faults and time (Container-Light at batch 1
# did here). A fixed threshold, and no trimming, make every worker allocate the same way. In-process,
# bench.timing.keep_freed_memory sets the same through mallopt; the environment is kept here too so
# that an --against revision older than that function is measured under the same allocator.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
FIGURE_LABELS = {"params": "params", "macs_fvcore": "MACs", "cpu_alloc_peak_bytes": "alloc peak"}


# ---------------------------------------------------------------------------------------------
# The suite


@dataclass(frozen=True)
class Row:
    name: str
    target: str  # "block" or "network"
    batch: int
    kind: str | None = None
    dim: int | None = None
    side: int | None = None
    network: str | None = None

    def spec(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def suite() -> list[Row]:
    """Every block kind at one stage shape, and Container-Light at batch 1."""
    rows = [Row(f"{kind}@{STAGE_DIM}x{STAGE_SIDE} b{BLOCK_BATCH}", "block", BLOCK_BATCH, kind=kind, dim=STAGE_DIM,
                side=STAGE_SIDE) for kind in container.BLOCK_KINDS]
    rows.append(Row("container_light b1", "network", 1, network="container_light"))
    return rows


def select_rows(names: Sequence[str] | None) -> list[Row]:
    rows = suite()
    if not names:
        return rows
    by_name = {r.name: r for r in rows}
    by_prefix = {r.name.split("@")[0].split(" ")[0]: r for r in rows}  # "conv", "container_light"
    chosen = []
    for name in names:
        row = by_name.get(name) or by_prefix.get(name)
        if row is None:
            raise BenchInputError(f"--rows {name!r}: not in the suite; valid rows: "
                                  f"{', '.join(by_prefix)}")
        if row not in chosen:
            chosen.append(row)
    return chosen


# ---------------------------------------------------------------------------------------------
# The decision (pure functions: tests/test_regress.py checks them on synthetic samples)


@dataclass(frozen=True)
class TimeVerdict:
    change: float  # Hodges-Lehmann estimate of new / reference - 1 (+0.15: 15% slower)
    p_slower: float  # one-sided Mann-Whitney U: new > reference
    p_faster: float  # one-sided Mann-Whitney U: new < reference
    regressed: bool
    faster: bool  # significantly faster by at least the effect size: time to update the baseline
    n_reference: int
    n_new: int


def _sample(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray([float(v) for v in values], dtype=float)
    if a.ndim != 1 or len(a) < 3 or not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise BenchInputError(f"{what}: need at least 3 finite positive times, got {list(values)!r}")
    return a


def decide(reference: Sequence[float], new: Sequence[float], min_effect: float = DEFAULT_MIN_EFFECT,
           alpha: float = DEFAULT_ALPHA) -> TimeVerdict:
    """Did `new` (normalised times, one per round) get slower than `reference`?

    Regressed only if the estimated slowdown is at least `min_effect` AND it is significant:
    the one-sided Mann-Whitney U test rejects "not slower" at level `alpha`. The estimate is the
    Hodges-Lehmann shift of log times (the median of all pairwise log ratios), as a ratio.
    """
    ref, cur = _sample(reference, "reference sample"), _sample(new, "new sample")
    change = float(np.exp(np.median(np.subtract.outer(np.log(cur), np.log(ref))))) - 1.0
    p_slower = float(stats.mannwhitneyu(cur, ref, alternative="greater").pvalue)
    p_faster = float(stats.mannwhitneyu(cur, ref, alternative="less").pvalue)
    return TimeVerdict(change=change, p_slower=p_slower, p_faster=p_faster,
                       regressed=change >= min_effect and p_slower < alpha,
                       faster=change <= -min_effect / (1 + min_effect) and p_faster < alpha,
                       n_reference=len(ref), n_new=len(cur))


@dataclass(frozen=True)
class FigureChange:
    row: str
    figure: str
    reference: int | None
    new: int | None

    @property
    def increase(self) -> bool:
        return self.reference is not None and self.new is not None and self.new > self.reference

    @property
    def relative(self) -> float:
        if not self.reference or self.new is None:
            return math.nan
        return self.new / self.reference - 1.0

    def text(self) -> str:
        rel = f" ({self.relative:+.1%})" if math.isfinite(self.relative) else ""
        return f"{FIGURE_LABELS.get(self.figure, self.figure)} {_fmt_int(self.reference)} -> {_fmt_int(self.new)}{rel}"


def compare_deterministic(reference: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[FigureChange]:
    """Exact comparison of the deterministic figures of every row the two sides share."""
    changes = []
    for row in new:
        if row not in reference:
            continue
        for figure in DETERMINISTIC:
            a, b = reference[row].get(figure), new[row].get(figure)
            if a != b:
                changes.append(FigureChange(row, figure, a, b))
    return changes


# ---------------------------------------------------------------------------------------------
# Measurement: worker processes, interleaved rounds


class WorkerProcess:
    """bench/regress_worker.py running against one tree (its cwd and first sys.path entry)."""

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
            raise RuntimeError(f"the {self.label} worker ({_rel(self.tree)}) died: {last}")
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


@dataclass
class Side:
    """Everything measured on one revision."""

    label: str  # "current", "reference"
    commit: str
    deterministic: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    injected: dict[str, float | None] = field(default_factory=dict)  # slowdown injected to test the gate
    passes: dict[str, int] = field(default_factory=dict)  # ... as extra elementwise passes per call
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def normalised(self, row: str) -> list[float]:
        return [r["normalised"] for r in self.rounds.get(row, [])]

    def median(self, row: str, key: str) -> float:
        values = [r[key] for r in self.rounds.get(row, [])]
        return float(np.median(values)) if values else math.nan


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


def measure_sides(trees: dict[str, tuple[Path, str]], rows: Sequence[Row], rounds: int, threads: int,
                  console=None, inject: str | None = "current", pairs: int = DEFAULT_PAIRS) -> dict[str, Side]:
    """Measure `rows` on every tree, in `rounds` interleaved rounds.

    `trees` maps a label to (tree, commit), one worker process each. In each round the rows come
    in a rotated order, and each row is measured by every tree in turn, the order of the trees
    alternating from row to row, so that a drift of the machine's speed lands on all sides alike.
    A measurement is one bench.measure_latency run that alternates the row and the calibration
    workload call by call (see regress_worker.Worker.measure); its figure for the round is the
    median over its `pairs` + 1 row calls of row time / geometric mean of the calibration calls
    on either side.
    """
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
        _say(console, f"[dim]set up {len(rows)} rows in {len(workers)} worker process(es) in "
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
                    sides[label].rounds.setdefault(row.name, []).append({
                        "normalised": float(np.median(reply["normalised"])),
                        "row_ms": float(np.median(reply["row_times_ms"])),
                        "calibration_ms": float(np.median(reply["calibration_times_ms"])),
                        "row_times_ms": reply["row_times_ms"], "calibration_times_ms": reply["calibration_times_ms"],
                        "pair_ratios": reply["normalised"]})
            _say(console, f"[dim]round {r + 1}/{rounds}: {time.perf_counter() - start:.1f} s[/dim]")
    except RuntimeError as error:
        raise BenchInputError(str(error).splitlines()[0]) from None
    finally:
        for worker in workers.values():
            worker.close()
    return sides


# ---------------------------------------------------------------------------------------------
# Baselines


def baseline_path(threads: int = DEFAULT_THREADS) -> Path:
    return BASELINE_DIR / f"{fingerprint('cpu', threads)}.json"


def baseline_document(side: Side, rows: Sequence[Row], threads: int, rounds: int) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "fingerprint": fingerprint("cpu", threads),
        "git_commit": side.commit,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": environment("cpu", threads),
        "threads": threads,
        "rounds": rounds,
        "pairs": DEFAULT_PAIRS,
        "method": METHOD,
        "suite": [r.spec() for r in rows],
        "rows": {r.name: side.deterministic[r.name] | {
            "normalised": side.normalised(r.name),
            "row_ms": [x["row_ms"] for x in side.rounds.get(r.name, [])],
            "calibration_ms": [x["calibration_ms"] for x in side.rounds.get(r.name, [])],
        } for r in rows if r.name in side.deterministic},
    }


def load_baseline(path: Path) -> dict[str, Any]:
    """The stored baseline, or a clear BenchInputError: a missing baseline never passes silently."""
    path = Path(path)
    hint = ("create it on this kind of machine with `make regress-update` (and commit it), or compare with "
            "another revision in the same job: `python -m bench regress --against REV`")
    if not path.exists():
        if path.parent.resolve() != BASELINE_DIR.resolve():
            raise BenchInputError(f"baseline {_rel(path)}: missing; {hint}")
        others = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        known = f" (baselines there are for other machines: {', '.join(others)})" if others else ""
        raise BenchInputError(f"baseline {_rel(path)}: missing for this machine (fingerprint "
                              f"{path.stem}){known}; {hint}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchInputError(f"baseline {_rel(path)}: unreadable ({str(e).splitlines()[0]}); {hint}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), dict):
        raise BenchInputError(f"baseline {_rel(path)}: not a {SCHEMA} file; {hint}")
    if doc.get("method") != METHOD:
        raise BenchInputError(f"baseline {_rel(path)}: made with measuring method {doc.get('method')!r}, this gate "
                              f"uses {METHOD!r}; {hint}")
    for name, row in doc["rows"].items():
        if not isinstance(row, dict) or any(k not in row for k in (*DETERMINISTIC, "normalised")):
            raise BenchInputError(f"baseline {_rel(path)}: row {name!r} lacks {', '.join(DETERMINISTIC)} or "
                                  f"its normalised times; {hint}")
        try:
            _sample(row["normalised"], f"row {name!r}")
        except BenchInputError as e:
            raise BenchInputError(f"baseline {_rel(path)}: {e}; {hint}") from None
    return doc


def baseline_side(doc: dict[str, Any]) -> Side:
    side = Side("baseline", str(doc.get("git_commit", "unknown")))
    for name, row in doc["rows"].items():
        side.deterministic[name] = {k: row[k] for k in DETERMINISTIC}
        calibration = row.get("calibration_ms") or [math.nan] * len(row["normalised"])
        row_ms = row.get("row_ms") or [math.nan] * len(row["normalised"])
        side.rounds[name] = [{"normalised": n, "calibration_ms": c, "row_ms": t}
                             for n, c, t in zip(row["normalised"], calibration, row_ms)]
    return side


def _rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)


# ---------------------------------------------------------------------------------------------
# Another revision in a temporary worktree


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


# ---------------------------------------------------------------------------------------------
# Report and history


@dataclass
class RowResult:
    row: str
    verdict: TimeVerdict | None
    changes: list[FigureChange]
    note: str = ""
    broken: bool = False  # this tree cannot build the row at all

    @property
    def regressed(self) -> bool:
        return bool(self.broken or (self.verdict and self.verdict.regressed) or any(c.increase for c in self.changes))


@dataclass
class Report:
    mode: str  # "baseline" or "against"
    reference: Side
    current: Side
    rows: list[RowResult]
    min_effect: float
    alpha: float
    reference_name: str

    @property
    def regressed(self) -> list[RowResult]:
        return [r for r in self.rows if r.regressed]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "reference": self.reference_name, "reference_commit": self.reference.commit,
                "current_commit": self.current.commit, "min_effect": self.min_effect, "alpha": self.alpha,
                "regressed": [r.row for r in self.regressed], "injected": self.current.injected,
                "injected_passes": self.current.passes,
                "rows": [{"row": r.row, "regressed": r.regressed, "note": r.note,
                          "time": asdict(r.verdict) if r.verdict else None,
                          "changes": [asdict(c) | {"increase": c.increase} for c in r.changes],
                          "current_normalised": self.current.normalised(r.row),
                          "reference_normalised": self.reference.normalised(r.row)} for r in self.rows]}


def compare(reference: Side, current: Side, rows: Sequence[Row], min_effect: float, alpha: float) -> list[RowResult]:
    changes = compare_deterministic(reference.deterministic, current.deterministic)
    results = []
    for row in rows:
        name = row.name
        mine = [c for c in changes if c.row == name]
        if name in current.errors:
            results.append(RowResult(name, None, mine, f"cannot build here: {current.errors[name]}", broken=True))
        elif name not in reference.deterministic:
            why = reference.errors.get(name, "not in the reference")
            results.append(RowResult(name, None, mine, f"new row, nothing to compare ({why})"))
        else:
            verdict = decide(reference.normalised(name), current.normalised(name), min_effect, alpha)
            results.append(RowResult(name, verdict, mine))
    return results


def _fmt_int(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.4g}{unit}"
    return f"{value:.0f}"


def render(report: Report, console) -> None:
    from rich.table import Table

    title = (f"regress: {report.current.commit} against {report.reference_name} ({report.reference.commit}); "
             f"slower by >= {report.min_effect:.0%} and p < {report.alpha:g} fails")
    table = Table(title=title, title_justify="left")
    for col, justify in (("row", "left"), ("time change", "right"), ("p (slower)", "right"),
                         ("rounds new/ref", "right"), ("row ms", "right"), ("deterministic figures", "left"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify)
    for r in report.rows:
        v = r.verdict
        if v is None:
            change, p, n = "-", "-", "-"
        else:
            change, p, n = f"{v.change:+.1%}", f"{v.p_slower:.2g}", f"{v.n_new}/{v.n_reference}"
        figures = "; ".join(c.text() for c in r.changes) or "unchanged"
        if r.regressed:
            why = [r.note] if r.broken else []
            if v is not None and v.regressed:
                why.append(f"{v.change:+.1%} slower")
            why += [f"{FIGURE_LABELS[c.figure]} up" for c in r.changes if c.increase]
            verdict = "[bold red]REGRESSED[/] (" + ", ".join(why) + ")"
        elif v is not None and v.faster:
            verdict = "[green]faster[/] (update the baseline?)"
        elif r.note:
            verdict = f"[yellow]{r.note}[/]"
        elif r.changes:
            verdict = "[green]ok[/] (figures went down)"
        else:
            verdict = "[green]ok[/]"
        ms = report.current.median(r.row, "row_ms")
        table.add_row(r.row, change, p, n, f"{ms:.1f}" if math.isfinite(ms) else "-", figures, verdict,
                      style="red" if r.regressed else None)
    console.print(table)
    if report.current.passes:
        console.print(f"[yellow]{SLOWDOWN_ENV} / {PASSES_ENV} is set: extra elementwise passes injected into the "
                      f"current side ({', '.join(f'{k}: {v}' for k, v in report.current.passes.items())})[/]")
    if report.regressed:
        console.print(f"[bold red]{len(report.regressed)} of {len(report.rows)} rows regressed:[/] "
                      + ", ".join(r.row for r in report.regressed))
    else:
        console.print(f"[green]no regression in {len(report.rows)} rows[/]")


def append_history(path: Path, sides: Sequence[Side], mode: str, threads: int,
                   regressed: Sequence[str] = ()) -> None:
    """One JSON line per row and side; the file is rewritten atomically (bench.io)."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = []
    for side in sides:
        for row, figures in side.deterministic.items():
            norm = side.normalised(row)
            if not norm:
                continue
            median = float(np.median(norm))
            lines.append(json.dumps({
                "timestamp_utc": stamp, "git_commit": side.commit, "side": side.label, "mode": mode,
                "fingerprint": fingerprint("cpu", threads), "threads": threads, "method": METHOD, "row": row,
                "normalised_time_median": median, "normalised_throughput": 1.0 / median,
                "row_ms_median": side.median(row, "row_ms"),
                "calibration_ms_median": side.median(row, "calibration_ms"), "rounds": len(norm),
                "regressed": row in regressed and side.label == "current",
                "injected_passes": side.passes.get(row, 0)} | figures))
    if not lines:
        return
    previous = path.read_text() if path.exists() else ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    write_text(path, previous + "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# Entry points


def run_gate(*, against: str | None = None, baseline: Path | None = None, rows: Sequence[Row] | None = None,
             rounds: int = DEFAULT_ROUNDS, threads: int = DEFAULT_THREADS, min_effect: float = DEFAULT_MIN_EFFECT,
             alpha: float = DEFAULT_ALPHA, history: Path | None = HISTORY_PATH, console=None) -> Report:
    """Measure the suite and compare it with a baseline file or with revision `against`."""
    rows = list(rows or suite())
    here = (REPO_ROOT, git_commit())
    if against is not None:
        _check_power(rounds, rounds, alpha)
        with revision_tree(against) as (tree, commit):
            sides = measure_sides({"current": here, "reference": (tree, commit)}, rows, rounds, threads, console)
        reference, reference_name, mode = sides["reference"], against, "against"
    else:
        path = Path(baseline) if baseline else baseline_path(threads)
        doc = load_baseline(path)  # before measuring anything: a missing baseline fails at once
        if doc.get("fingerprint") != fingerprint("cpu", threads):
            _say(console, f"[yellow]note: {_rel(path)} was made on machine {doc.get('fingerprint')}, this is "
                          f"{fingerprint('cpu', threads)}[/]")
        missing = [r.name for r in rows if r.name not in doc["rows"]]
        if missing:
            raise BenchInputError(f"baseline {_rel(path)}: has no row {missing[0]!r} (suite changed?); "
                                  f"update it with `make regress-update`")
        reference, reference_name, mode = baseline_side(doc), f"baseline {_rel(path)}", "baseline"
        _check_power(rounds, min(len(reference.normalised(r.name)) for r in rows), alpha)
        sides = {"current": measure_sides({"current": here}, rows, rounds, threads, console)["current"]}
    current = sides["current"]
    results = compare(reference, current, rows, min_effect, alpha)
    report = Report(mode, reference, current, results, min_effect, alpha, reference_name)
    if history is not None:
        append_history(history, list(sides.values()), mode, threads, [r.row for r in report.regressed])
    return report


def _check_power(n_new: int, n_reference: int, alpha: float) -> None:
    """With n and m rounds the smallest one-sided Mann-Whitney p is 1 / C(n + m, n): it must be < alpha."""
    if 1 / math.comb(n_new + n_reference, n_new) >= alpha:
        raise BenchInputError(f"--rounds {n_new}: with {n_reference} reference rounds no outcome is significant at "
                              f"--alpha {alpha:g}; use more rounds")


def update_baseline(*, path: Path | None = None, rows: Sequence[Row] | None = None,
                    rounds: int = DEFAULT_UPDATE_ROUNDS,
                    threads: int = DEFAULT_THREADS, history: Path | None = HISTORY_PATH, console=None) -> Path:
    rows = list(rows or suite())
    side = measure_sides({"current": (REPO_ROOT, git_commit())}, rows, rounds, threads, console)["current"]
    if side.errors:
        name, error = next(iter(side.errors.items()))
        raise BenchInputError(f"row {name!r}: cannot be built ({error}); no baseline written")
    path = Path(path) if path else baseline_path(threads)
    write_json(path, baseline_document(side, rows, threads, rounds))
    if history is not None:
        append_history(history, [side], "update", threads)
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--against", metavar="REV", default=None,
                        help="compare with git revision REV, checked out in a temporary worktree and measured "
                             "interleaved with this tree (no stored baseline needed)")
    parser.add_argument("--fallback-against", metavar="REV", default=None,
                        help="compare with the committed baseline where this machine has one, else with REV as "
                             "--against does (what .ci/run uses: CI machines come and go)")
    parser.add_argument("--update", action="store_true",
                        help="measure and write the baseline for this machine (results/baselines/<fingerprint>.json)")
    parser.add_argument("--baseline", default=None, help="baseline file (default results/baselines/<fingerprint>.json)")
    parser.add_argument("--rows", default=None,
                        help="comma-separated subset of the suite, by kind or name (default: all rows)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"timed rounds per row (default {DEFAULT_ROUNDS}; {DEFAULT_UPDATE_ROUNDS} with --update)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                        help=f"intra-op threads (default {DEFAULT_THREADS}; part of the machine fingerprint)")
    parser.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                        help=f"smallest slowdown that fails, as a fraction (default {DEFAULT_MIN_EFFECT})")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"significance level of the one-sided Mann-Whitney U test (default {DEFAULT_ALPHA})")
    parser.add_argument("--history", default=str(HISTORY_PATH), help="history file to append to")
    parser.add_argument("--no-history", action="store_true", help="do not append to the history file")
    parser.add_argument("--json", default=None, help="also write the report as JSON to this file")


def _validate(args: argparse.Namespace) -> None:
    if args.rounds is None:
        args.rounds = DEFAULT_UPDATE_ROUNDS if args.update else DEFAULT_ROUNDS
    if args.rounds < 3:
        raise BenchInputError(f"--rounds {args.rounds}: need at least 3 rounds for a test of significance")
    if args.threads < 1:
        raise BenchInputError(f"--threads {args.threads}: must be >= 1")
    if not 0 < args.min_effect < 10:
        raise BenchInputError(f"--min-effect {args.min_effect}: a fraction such as 0.10")
    if not 0 < args.alpha < 1:
        raise BenchInputError(f"--alpha {args.alpha}: must be between 0 and 1")
    if args.update and (args.against or args.fallback_against):
        raise BenchInputError("--update and --against: a baseline is written from this tree only; pick one")
    if args.against and args.fallback_against:
        raise BenchInputError("--against and --fallback-against: pick one")
    if args.fallback_against and not args.baseline and not baseline_path(args.threads).exists():
        print(f"note: no baseline for this machine ({_rel(baseline_path(args.threads))}); comparing with "
              f"--against {args.fallback_against} instead", file=sys.stderr)
        args.against = args.fallback_against


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bench.report import table_console

    console = Console(stderr=True)
    out = table_console()
    try:
        _validate(args)
        rows = select_rows([s.strip() for s in args.rows.split(",") if s.strip()] if args.rows else None)
        history = None if args.no_history else Path(args.history)
        if args.update:
            if os.environ.get(SLOWDOWN_ENV) or os.environ.get(PASSES_ENV):
                raise BenchInputError(f"{SLOWDOWN_ENV} or {PASSES_ENV} is set: refusing to write a baseline with "
                                      f"an injected slowdown")
            path = update_baseline(path=Path(args.baseline) if args.baseline else None, rows=rows,
                                   rounds=args.rounds, threads=args.threads, history=history, console=console)
            out.print(f"wrote baseline {_rel(path)} ({len(rows)} rows, {args.rounds} rounds, commit "
                      f"{git_commit()}, machine {fingerprint('cpu', args.threads)})", highlight=False)
            return 0
        report = run_gate(against=args.against, baseline=Path(args.baseline) if args.baseline else None, rows=rows,
                          rounds=args.rounds, threads=args.threads, min_effect=args.min_effect, alpha=args.alpha,
                          history=history, console=console)
        render(report, out)
        if args.json:
            write_json(args.json, report.to_json())
        return 1 if report.regressed else 0
    except BenchInputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="python -m bench.regress")
    configure_parser(_parser)
    raise SystemExit(main(_parser.parse_args()))
