"""`python -m search repeat --budget-ms 25 40`: does a seeded search reproduce on this machine?

The same search (every flag of `python -m search` but the storage ones) runs `--times` times per budget, each run
in a study of its own under `--out` (run-1/, run-2/, ...: nothing is resumed and no latency is shared between runs),
with `--pause-s` seconds between two runs. With the sampler's seed fixed, the runs can differ only where a
measured latency does: a candidate near the budget that fits in one run and not in another changes what TPE
proposes next, and possibly the winner. Per budget the report says

* whether every run picks the same winner (the ranked best architecture: their configs are compared);
* how many leading proposals are identical (trial i proposes the same config in every run), and where they diverge;
* among the proposals identical in every run (same trial number, same config), how many have the same feasibility
  in every run, with a table of those that do not and their latencies in each run (`latency_median_ms`, and
  `latency_norm_ms` / `machine_speed` where the trials table has them);
* each run's winner: trial, #params, score, latency.

Writes `--out` (default: the results root's search-repeat/<UTC time>/): repeat.json, repeat.md, and each run's
studies and search reports under run-<i>/. Exit status: 0 the report (whether or not the runs agree); 2 bad input,
naming the flag; 130 interrupted (the report covers the runs finished).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
from rich.console import Console

from container import as_config

from search.latency import LatencySource
from search.scoring.proxies import Scorer
from search.settings import NoFeasibleNetworkError, SearchSettings
from search.space import SearchInputError
from search.study import run_search
from search.trials import TRIAL_COLUMNS, SearchResult

REPEAT_DIR = "search-repeat"  # under the results root: one directory per repeat, named by its start time (UTC)
# The latency columns a report shows, where the trials table has them: as measured, at the machine's reference
# speed, and the factor between the two.
LATENCY_COLUMNS = ("latency_median_ms", "latency_norm_ms", "machine_speed")
LATENCY_LABELS = {"latency_median_ms": "median (ms)", "latency_norm_ms": "at reference speed (ms)",
                  "machine_speed": "machine speed"}


# --- comparing runs -------------------------------------------------------------------------------------------------


@dataclass
class RunWinner:
    """One run's ranked best architecture (all None where the run found no feasible one)."""

    run: int  # 1-based
    trial: int | None = None
    params: int | None = None  # number of parameters
    score: float | None = None
    latency: dict[str, float | None] = field(default_factory=dict)  # by LATENCY_COLUMNS name
    config: dict[str, Any] | None = None

    @property
    def architecture(self) -> str:
        return as_config(self.config).describe_short() if self.config is not None else "-"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"architecture": self.architecture}


@dataclass
class FeasibilityDifference:
    """A proposal identical in every run (same trial number, same config) that fits in some runs and not others."""

    trial: int
    config: dict[str, Any]
    feasible: list[bool]  # per run
    latency: list[dict[str, float | None]]  # per run, by LATENCY_COLUMNS name

    @property
    def architecture(self) -> str:
        return as_config(self.config).describe_short()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"architecture": self.architecture}


@dataclass
class RepeatComparison:
    """How far N runs of one seeded search agree (see compare_runs)."""

    trials: list[int]  # trials per run
    leading_identical: int  # trials 0, 1, ... proposing the same config in every run, before the first that does not
    first_divergence: int | None  # the first trial number not identical in every run; None: all are
    identical: int  # proposals identical in every run (same trial number, same config), wherever they are
    same_feasibility: int  # ... of which have the same feasibility in every run
    differences: list[FeasibilityDifference]  # ... of which do not
    winners: list[RunWinner]
    latency_columns: list[str]  # the LATENCY_COLUMNS the trials tables have

    @property
    def runs(self) -> int:
        return len(self.trials)

    @property
    def same_winner(self) -> bool:
        """Every run's winner is the same architecture (their configs are equal), or no run has one."""
        return all(w.config == self.winners[0].config for w in self.winners)

    @property
    def reproduced(self) -> bool:
        """Every proposal, its feasibility and the winner are the same in every run."""
        return self.same_winner and self.first_divergence is None and not self.differences

    def sentence(self) -> str:
        """The verdict in one sentence."""
        n = self.runs
        if self.reproduced:
            return (f"The {n} runs reproduce: {self._proposals()}, each with the same feasibility in every run, "
                    f"and they {self._winner()}.")
        if self.same_winner:
            return (f"The {n} runs {self._winner()}, but the searches differ: {self._proposals()}; "
                    f"{self._feasibility()}.")
        return f"The {n} runs do not reproduce: they {self._winner()}; {self._proposals()}; {self._feasibility()}."

    def _winner(self) -> str:
        first = self.winners[0]
        if self.same_winner and first.config is None:
            return "find no feasible network"
        if self.same_winner:
            trials = sorted({w.trial for w in self.winners})
            at = f"trial {trials[0]}" if len(trials) == 1 else f"trials {', '.join(map(str, trials))}"
            return f"pick the same winner ({at}: {first.architecture})"
        each = "; ".join(f"run {w.run}: " + (f"trial {w.trial}, {w.architecture}" if w.config is not None else "none")
                         for w in self.winners)
        return f"pick different winners ({each})"

    def _proposals(self) -> str:
        counts = "" if len(set(self.trials)) == 1 else f" (trials per run: {', '.join(map(str, self.trials))})"
        if self.first_divergence is None:
            return f"all {self.trials[0]} proposals are identical"
        if self.leading_identical == 0:
            return f"the proposals differ from trial {self.first_divergence} on{counts}"
        return (f"the first {self.leading_identical} proposals are identical, then they diverge at trial "
                f"{self.first_divergence}{counts}")

    def _feasibility(self) -> str:
        if self.identical == 0:
            return "no proposal is identical in every run"
        text = (f"{self.same_feasibility} of the {self.identical} identical proposals have the same feasibility "
                f"in every run")
        if self.differences:
            flips = [d.trial for d in self.differences]
            text += (f"; trial {flips[0]} fits in some runs only" if len(flips) == 1 else
                     f"; trials {', '.join(map(str, flips))} fit in some runs only")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "trials": self.trials, "reproduced": self.reproduced,
                "same_winner": self.same_winner, "leading_identical": self.leading_identical,
                "first_divergence": self.first_divergence, "identical": self.identical,
                "same_feasibility": self.same_feasibility,
                "differences": [d.to_dict() for d in self.differences],
                "winners": [w.to_dict() for w in self.winners], "latency_columns": self.latency_columns,
                "sentence": self.sentence()}


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _flag(value: Any) -> bool:
    return not _missing(value) and bool(value)


def _float(value: Any) -> float | None:
    if _missing(value):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _config(value: Any) -> dict[str, Any] | None:
    if _missing(value):
        return None
    return json.loads(value) if isinstance(value, str) else dict(value)


def _rows(frame: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Trial number -> its row, with the config as a dict."""
    rows = {}
    for row in frame.to_dict(orient="records"):
        if _missing(row.get("trial")):
            continue
        rows[int(row["trial"])] = row | {"config": _config(row.get("config"))}
    return rows


def best_trial(frame: pd.DataFrame) -> int | None:
    """The ranked winner's trial number of a trials table, as search.report.ranking orders it: feasible and not
    dropped on re-measurement, best score first, then faster (at the reference speed where the table has it),
    then earlier."""
    if frame.empty or "feasible" not in frame:
        return None
    keep = frame["feasible"].map(_flag)
    if "dropped" in frame:
        keep &= ~frame["dropped"].map(_flag)
    ranked = frame[keep].copy()
    if ranked.empty:
        return None
    normalised = "latency_norm_ms" in ranked and ranked["latency_norm_ms"].notna().any()
    latency = "latency_norm_ms" if normalised else "latency_median_ms"
    ranked["_score"] = pd.to_numeric(ranked["score"], errors="coerce").fillna(-math.inf)
    ranked["_latency"] = pd.to_numeric(ranked[latency], errors="coerce").fillna(math.inf)
    ranked = ranked.sort_values(["_score", "_latency", "trial"], ascending=[False, True, True])
    return int(ranked.iloc[0]["trial"])


def _winner_trial(run: SearchResult | pd.DataFrame) -> int | None:
    if isinstance(run, SearchResult):  # the search's own ranking decides
        return None if run.ranking.empty else int(run.ranking.iloc[0]["trial"])
    return best_trial(run)


def compare_runs(runs: Sequence[SearchResult | pd.DataFrame]) -> RepeatComparison:
    """Compare N >= 2 runs of one seeded search, given as SearchResults or as their trials tables
    (search.trials.trials_frame: columns trial, feasible, score, params, config, latency_median_ms, and
    latency_norm_ms / machine_speed / dropped where present)."""
    if len(runs) < 2:
        raise ValueError(f"compare_runs: needs at least two runs, got {len(runs)}")
    frames = [r.trials if isinstance(r, SearchResult) else r for r in runs]
    rows = [_rows(f) for f in frames]
    columns = [c for c in LATENCY_COLUMNS if any(c in f and f[c].notna().any() for f in frames)]

    def latency(row: dict[str, Any] | None) -> dict[str, float | None]:
        return {c: _float(row.get(c)) if row is not None else None for c in columns}

    numbers = sorted(set().union(*(r.keys() for r in rows)))
    same: list[int] = []  # identical in every run: present, with one config
    for n in numbers:
        configs = [r[n]["config"] if n in r else None for r in rows]
        if configs[0] is not None and all(c == configs[0] for c in configs):
            same.append(n)
    leading = 0
    for n in numbers:
        if leading < len(same) and same[leading] == n:
            leading += 1
        else:
            break
    first_divergence = numbers[leading] if leading < len(numbers) else None
    differences = []
    for n in same:
        fits = [_flag(r[n].get("feasible")) for r in rows]
        if len(set(fits)) > 1:
            differences.append(FeasibilityDifference(trial=n, config=rows[0][n]["config"], feasible=fits,
                                                     latency=[latency(r[n]) for r in rows]))
    winners = []
    for i, (run, r) in enumerate(zip(runs, rows), start=1):
        trial = _winner_trial(run)
        row = r.get(trial) if trial is not None else None
        if row is None:
            winners.append(RunWinner(run=i, latency=latency(None)))
            continue
        params = _float(row.get("params"))
        winners.append(RunWinner(run=i, trial=trial, params=None if params is None else int(params),
                                 score=_float(row.get("score")), latency=latency(row), config=row["config"]))
    return RepeatComparison(trials=[len(r) for r in rows], leading_identical=leading,
                            first_divergence=first_divergence, identical=len(same),
                            same_feasibility=len(same) - len(differences), differences=differences,
                            winners=winners, latency_columns=columns)


# --- running the search N times -------------------------------------------------------------------------------------


@dataclass
class RepeatRun:
    """One run of one budget's search."""

    run: int  # 1-based
    directory: Path  # its results directory (run-<i>/ under the repeat's)
    study: str
    elapsed_s: float = 0.0
    trials: int = 0
    error: str | None = None  # the search stopped before its first trial (no network fits the budget)
    interrupted: bool = False
    result: SearchResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.run, "directory": str(self.directory), "study": self.study,
                "elapsed_s": round(self.elapsed_s, 3), "trials": self.trials, "error": self.error,
                "interrupted": self.interrupted}


@dataclass
class BudgetRepeat:
    """Every run of one budget, and how far they agree (None until two runs have finished)."""

    budget_ms: float
    study: str
    runs: list[RepeatRun] = field(default_factory=list)
    comparison: RepeatComparison | None = None

    def compare(self) -> None:
        done = [r for r in self.runs if not r.interrupted]
        if len(done) < 2:
            self.comparison = None
            return
        empty = pd.DataFrame(columns=TRIAL_COLUMNS)
        self.comparison = compare_runs([r.result if r.result is not None else empty for r in done])

    def sentence(self) -> str:
        errors = [r for r in self.runs if r.error]
        if self.comparison is None:
            done = sum(not r.interrupted for r in self.runs)
            return f"Interrupted with {done} run{'' if done == 1 else 's'} finished: nothing to compare."
        if len(errors) == len(self.runs):
            return f"No run got to its first trial: {errors[0].error}"
        text = self.comparison.sentence()
        for r in errors:
            text += f" Run {r.run} stopped before its first trial: {r.error}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"budget_ms": self.budget_ms, "study": self.study, "sentence": self.sentence(),
                "runs": [r.to_dict() for r in self.runs],
                "comparison": self.comparison.to_dict() if self.comparison is not None else None}


@dataclass
class RepeatReport:
    out: Path
    times: int
    pause_s: float
    budgets: list[BudgetRepeat]
    interrupted: bool = False
    wall_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)


def run_repeat(searches: Sequence[SearchSettings], out: Path, *, times: int = 2, pause_s: float = 10.0,
               latency_source: LatencySource | None = None, scorer: Scorer | None = None,
               console: Console | None = None, sleep: Callable[[float], None] = time.sleep) -> RepeatReport:
    """Run each search (one per budget) `times` times, run i in its own results directory `out`/run-<i>/ (the
    settings' results_dir is replaced), with `pause_s` seconds between two runs, and compare each budget's runs.
    `latency_source` and `scorer` replace the real ones (tests). Ctrl-C stops it: the report covers the runs
    finished (`interrupted`). Raises SearchInputError on bad input, naming the flag."""
    if isinstance(times, bool) or times < 2:
        raise SearchInputError(f"--times {times}: must be >= 2 (each run is compared with the others)")
    if not (pause_s >= 0 and math.isfinite(pause_s)):
        raise SearchInputError(f"--pause-s {pause_s}: must be a number of seconds >= 0")
    if not searches:
        raise SearchInputError("--budget-ms: give at least one budget")
    names = [s.name for s in searches]
    if len(set(names)) != len(names):
        raise SearchInputError(f"--budget-ms {' '.join(f'{s.budget_ms:g}' for s in searches)}: give each budget once")
    if any(s.storage.url is not None for s in searches):
        raise SearchInputError("--storage: each run needs a study of its own; leave the storage to repeat")
    out = Path(out)
    taken = [out / f"run-{i}" for i in range(1, times + 1) if (out / f"run-{i}").exists()]
    if taken:
        raise SearchInputError(f"--out {out}: already holds {taken[0].name}/ of an earlier repeat (which would be "
                               f"resumed, not repeated); give a new directory")
    console = console or Console(stderr=True)
    start = time.perf_counter()
    report = RepeatReport(out=out, times=times, pause_s=pause_s,
                          budgets=[BudgetRepeat(budget_ms=s.budget_ms, study=s.name) for s in searches])
    first = True
    try:
        for search, budget in zip(searches, report.budgets):
            for i in range(1, times + 1):
                if not first and pause_s > 0:
                    sleep(pause_s)
                first = False
                console.rule(f"budget {search.budget_ms:g} ms, run {i}/{times}")
                # The same scoring group: a data set is loaded once for every run.
                settings = replace(search, storage=replace(search.storage, results_dir=out / f"run-{i}"))
                run = RepeatRun(run=i, directory=settings.storage.results_dir, study=settings.name)
                budget.runs.append(run)
                began = time.perf_counter()
                try:
                    result = run_search(settings, latency_source=latency_source, scorer=scorer, console=console)
                except NoFeasibleNetworkError as e:
                    run.error = str(e).splitlines()[0]
                    run.elapsed_s = time.perf_counter() - began
                    continue
                except KeyboardInterrupt:
                    run.interrupted = True
                    raise
                run.result, run.trials, run.interrupted = result, len(result.trials), result.interrupted
                run.elapsed_s = time.perf_counter() - began
                if result.interrupted:
                    raise KeyboardInterrupt
            budget.compare()
    except KeyboardInterrupt:
        report.interrupted = True
        for budget in report.budgets:
            budget.compare()
    report.wall_s = time.perf_counter() - start
    return report


__all__ = ["BudgetRepeat", "FeasibilityDifference", "LATENCY_COLUMNS", "REPEAT_DIR", "RepeatComparison",
           "RepeatReport", "RepeatRun", "RunWinner", "best_trial", "compare_runs", "run_repeat"]
