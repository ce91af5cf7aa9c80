"""A rich progress bar for the search: trials done, best feasible score so far, then the re-check."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from search.trials import TrialRecord, counts_toward_target, feasible


class TrialSource(Protocol):
    """What the progress display reads from a running study (search.study.SearchStudy is one)."""

    def trials(self) -> list[FrozenTrial]: ...


class SearchProgress:
    def __init__(self, source: TrialSource, *, title: str, target: int | None, budget_ms: float, objective: str,
                 enabled: bool = True, console: Console | None = None):
        self.source = source
        self.title, self.target, self.budget_ms, self.objective = title, target, budget_ms, objective
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.recheck_task: TaskID | None = None
        self.best: tuple[float, float, int] | None = None  # (score, latency, trial)
        self.infeasible = 0
        self.failed = 0

    def __enter__(self) -> "SearchProgress":
        if not self.enabled:
            return self
        trials = self.source.trials()
        done = sum(counts_toward_target(t) for t in trials)
        for t in trials:
            self._note(t, feasible(t))
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[best]}"), console=self.console,
                                 transient=False)
        self.progress.start()
        self.task = self.progress.add_task(self.title, total=self.target, completed=done, best=self._best_text())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _note(self, t: FrozenTrial, is_feasible: bool) -> None:
        if t.state == optuna.trial.TrialState.FAIL:
            self.failed += 1
            return
        if t.state != optuna.trial.TrialState.COMPLETE:
            return
        if not is_feasible:
            self.infeasible += 1
            return
        record = TrialRecord.of(t)
        score = record.score
        if score is None or not math.isfinite(score):
            return
        candidate = (score, -record.deciding_ms, -t.number)
        if self.best is None or candidate > self.best:
            self.best = candidate

    def _best_text(self) -> str:
        budget = self.budget_ms
        extra = f" | over budget {self.infeasible}" + (f" | failed {self.failed}" if self.failed else "")
        if self.best is None:
            return f"best feasible: none yet (budget {budget:g} ms){extra}"
        score, neg_latency, neg_trial = self.best
        return (f"best feasible {self.objective}: {score:.4g} "
                f"(trial {-neg_trial}, {-neg_latency:.1f} ms <= {budget:g} ms){extra}")

    def callback(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._note(trial, feasible(trial))
        record = TrialRecord.of(trial)
        if trial.state == optuna.trial.TrialState.FAIL and record.error and not record.interrupted:
            self.console.print(f"[yellow]trial {trial.number} failed[/]: {record.error}")
        if self.progress is not None:
            done = sum(counts_toward_target(t) for t in self.source.trials())
            self.progress.update(self.task, completed=done, best=self._best_text())

    def recheck(self, done: int, total: int) -> None:
        if self.progress is None or total == 0:
            return
        if self.recheck_task is None:
            self.recheck_task = self.progress.add_task("re-measuring the feasible candidates", total=total, best="")
        self.progress.update(self.recheck_task, completed=done)


@contextmanager
def predictor_progress(*, enabled: bool = True, console: Console | None = None
                       ) -> Iterator[Callable[[int, int, str], None]]:
    """A progress bar while the latency predictor builds this machine's table on first use (minutes); yields the
    predictor's `on_measure(done, total, part)` callback (a no-op when disabled)."""
    if not enabled:
        yield lambda done, total, part: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[part]}"), console=console or Console(stderr=True)) as progress:
        task = progress.add_task("latency predictor, first use on this machine: timing its parts", total=None, part="")

        def on_measure(done: int, total: int, part: str) -> None:
            if done >= total:  # the parts are done; the calibration's whole networks follow, without a count
                progress.update(task, completed=total, total=total, part="then calibrating on whole networks")
            else:
                progress.update(task, completed=done, total=total, part=part)

        yield on_measure
