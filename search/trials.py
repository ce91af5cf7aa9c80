"""A study's trials: what the search records on each (`TrialRecord`), which are feasible, which count toward the
target, their order, and their table.

Every trial attribute the search writes or reads goes through `TrialRecord`: `record.write(trial)` stores what was
set since the last write, `TrialRecord.of(trial)` reads a trial's attributes back (a study from before an attribute
existed reads None for it). The report and the progress display read trials through this module, not through the
study.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from search.latency import Latency

CONSTRAINT = "latency_ms"  # latency median - budget; feasible when <= 0

TRIAL_COLUMNS = ["trial", "state", "score", "score_spread", "params", "flops", "latency_norm_ms", "latency_median_ms",
                 "machine_speed", "latency_norm_low_ms", "latency_norm_high_ms", "latency_p90_ms",
                 "latency_iqr_ms", "latency_cached", "latency_source", "latency_predicted_ms", "runtime", "accuracy",
                 "epochs_trained", "train_s", "feasible",
                 "rechecked", "recheck_norm_ms", "recheck_median_ms", "recheck_p90_ms", "dropped", "error",
                 "interrupted", "retry_of", "start", "finalist_accuracy", "duration_s", "config_key", "config"]


@dataclass
class TrialRecord:
    """Everything the search records on one trial, typed: each field is stored as the trial user attribute of the
    same name (the names of studies written before this class, which still load).

    A field counts as recorded once it is given to the constructor (other than its default), assigned, or read
    back by `of`; `write(trial)` stores the fields set since the last write, one attribute each, so that what a
    trial had recorded survives a failure, a Ctrl-C or a kill later in the trial. Reading tolerates missing
    attributes: their fields stay None (False for the flags)."""

    worker: dict[str, Any] | None = None  # {"host", "pid"} of the worker that ran it (search.storage.this_worker)
    config: dict[str, Any] | None = None  # the NetworkConfig as a dict
    config_key: str | None = None  # search.latency.config_key: config + fingerprint + deployment setting
    runtime: str | None = None  # what the latency was measured on
    # The latency (search.latency.Latency): the deciding figure (at the machine's reference speed, or as measured
    # where there is no normalised one), as measured, the 95% interval, and the machine's speed at the time.
    latency_norm_ms: float | None = None
    latency_median_ms: float | None = None
    latency_norm_low_ms: float | None = None
    latency_norm_high_ms: float | None = None
    machine_speed: float | None = None
    latency_runs: int | None = None
    latency_p90_ms: float | None = None
    latency_iqr_ms: float | None = None
    latency_noisy: bool | None = None
    latency_cached: bool | None = None
    latency_source: str | None = None  # "bench", "predicted" (the predictor gate; never feasible) or a custom one
    latency_predicted_ms: float | None = None  # the predictor gate's figure, where a gate screened the config
    params: int | None = None
    flops: int | None = None
    scored: bool | None = None  # False: over budget and not scored
    score: float | None = None  # None: not scored, or not finite
    score_spread: float | None = None
    # --objective accuracy (search.scoring.accuracy.train_trial)
    accuracy: float | None = None  # validation accuracy after the last epoch trained
    epochs_trained: int | None = None
    train_s: float | None = None
    learning_curve: list[float] | None = None
    pruned_at_epoch: int | None = None
    error: str | None = None  # why the trial failed, in one line
    interrupted: bool = False  # cut short by Ctrl-C / SIGTERM (queued again on resume)
    lost: bool = False  # its worker died (queued again by search.storage.recover_lost_trials)
    retry_of: int | None = None  # the trial number this one retries
    start: str | None = None  # "scaled": enqueued from the scaled Container-Light family (search.scaled)

    NAMES: ClassVar[tuple[str, ...]]
    _FLAGS: ClassVar[frozenset[str]] = frozenset({"interrupted", "lost"})

    def __post_init__(self) -> None:
        given = {f.name for f in fields(self) if getattr(self, f.name) != f.default}
        object.__setattr__(self, "_recorded", given)
        object.__setattr__(self, "_pending", set(given))

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        pending = self.__dict__.get("_pending")
        if pending is not None and name in self.NAMES:
            pending.add(name)
            self._recorded.add(name)

    # --- reading ------------------------------------------------------------------------------------------------

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "TrialRecord":
        """The record of these user attributes: unknown ones are ignored, missing ones stay None."""
        known = {name: attrs[name] for name in cls.NAMES if name in attrs}
        record = cls(**{k: bool(v) if k in cls._FLAGS else v for k, v in known.items()})
        object.__setattr__(record, "_recorded", set(known))
        object.__setattr__(record, "_pending", set())
        return record

    @classmethod
    def of(cls, trial: FrozenTrial) -> "TrialRecord":
        """What the search recorded on `trial` (a FrozenTrial, or anything with `user_attrs`)."""
        return cls.from_attrs(trial.user_attrs)

    @property
    def deciding_ms(self) -> float:
        """The latency the trial was decided on: at the machine's reference speed (`latency_norm_ms`), or as
        measured in a study from before normalisation; inf where nothing was measured."""
        value = self.latency_norm_ms if self.latency_norm_ms is not None else self.latency_median_ms
        return math.inf if value is None else float(value)

    @property
    def predicted(self) -> bool:
        """Its latency was only predicted (the predictor gate rejected it unmeasured)."""
        return self.latency_source == "predicted"

    @property
    def cut_short(self) -> bool:
        """Interrupted, or lost with its worker: neither counts toward the target (both are retried)."""
        return bool(self.interrupted or self.lost)

    # --- writing ------------------------------------------------------------------------------------------------

    def note_latency(self, latency: "Latency") -> None:
        """Record a latency (search.latency.Latency): the deciding figure as `latency_norm_ms`."""
        self.latency_norm_ms = latency.deciding_ms
        self.latency_median_ms = latency.median_ms
        self.latency_norm_low_ms = latency.norm_low_ms
        self.latency_norm_high_ms = latency.norm_high_ms
        self.machine_speed = latency.machine_speed
        self.latency_runs = latency.runs
        self.latency_p90_ms = latency.p90_ms
        self.latency_iqr_ms = latency.iqr_ms
        self.latency_noisy = latency.noisy
        self.latency_cached = latency.cached
        self.latency_source = latency.source
        if latency.predicted_ms is not None:
            self.latency_predicted_ms = latency.predicted_ms

    def to_attrs(self) -> dict[str, Any]:
        """The recorded fields as user attributes (name -> value), e.g. for `study.enqueue_trial(user_attrs=...)`."""
        return {name: getattr(self, name) for name in self.NAMES if name in self._recorded}

    def write(self, trial: Any) -> None:
        """Store the fields set since the last write as `trial`'s user attributes (an optuna.Trial)."""
        self._flush(trial.set_user_attr)

    def write_to(self, storage: "BaseStorage", trial_id: int) -> None:
        """The same through a storage, for a trial this process does not run (e.g. a dead worker's)."""
        self._flush(lambda name, value: storage.set_trial_user_attr(trial_id, name, value))

    def _flush(self, set_attr: Any) -> None:
        for name in [n for n in self.NAMES if n in self._pending]:
            set_attr(name, getattr(self, name))
            self._pending.discard(name)  # one at a time: an interrupted write is completed by the next one


TrialRecord.NAMES = tuple(f.name for f in fields(TrialRecord))


@dataclass
class Recheck:
    """The re-measurement of one architecture before the report (a study user attribute `recheck:<config_key>`).

    `decided_ms` is the mean of the trial's figure and the re-checked `norm_ms` (both at the machine's reference
    speed); all figures are None when the re-measurement failed (`error`)."""

    norm_ms: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    iqr_ms: float | None = None
    decided_ms: float | None = None
    fits: bool = False
    trial: int | None = None
    error: str | None = None

    @property
    def figure_ms(self) -> float | None:
        """The re-checked figure at the reference speed (as measured in a study from before normalisation)."""
        return self.norm_ms if self.norm_ms is not None else self.median_ms

    def kept(self, limit_ms: float) -> bool:
        """A re-checked trial stays when its decided figure (the mean of its first and re-checked figures; in a study
        from before that, the re-checked one alone) is within the limit."""
        figure = self.decided_ms if self.decided_ms is not None else self.figure_ms
        return figure is not None and figure <= limit_ms

    def to_attrs(self) -> dict[str, Any]:
        data = asdict(self)
        if data["error"] is None:
            del data["error"]
        return data

    @classmethod
    def from_attrs(cls, data: Mapping[str, Any]) -> "Recheck":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def feasible(trial: FrozenTrial) -> bool:
    """Complete and within budget by its constraint. A latency that was only predicted is never feasible:
    the predictor gate answers only for candidates clearly over budget, and nothing unmeasured is ranked."""
    return (trial.state == TrialState.COMPLETE and bool(trial.constraints)
            and all(v <= 0 for v in trial.constraints.values())
            and not TrialRecord.of(trial).predicted)


def counts_toward_target(trial: FrozenTrial) -> bool:
    """Finished trials count (a pruned one too: trained, not to the end, and never ranked); trials lost to a
    kill or Ctrl-C do not (they are retried), nor do candidates the predictor gate rejected unmeasured: `--trials`
    is how many candidates are measured, what a search costs, and a rejection costs milliseconds."""
    if trial.state == TrialState.COMPLETE and TrialRecord.of(trial).predicted:
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not TrialRecord.of(trial).cut_short


def rank_key(t: FrozenTrial) -> tuple[float, float, int]:
    """Best score first, then faster, then earlier."""
    record = TrialRecord.of(t)
    score = record.score
    return (-(score if score is not None else -math.inf), record.deciding_ms, t.number)


def trials_frame(trials: list[FrozenTrial], recheck_limit_ms: float, rechecks: Mapping[str, Recheck],
                 finalists: Mapping[str, float] | None = None) -> pd.DataFrame:
    """One row per trial: state, score, #params, FLOPs, latency, feasibility, re-check, config.

    A feasible trial is `dropped` when its re-measured median exceeds `recheck_limit_ms` (or the
    re-measurement failed)."""
    rows = []
    for t in trials:
        r = TrialRecord.of(t)
        rc = rechecks.get(r.config_key) if r.config_key else None
        is_feasible = feasible(t)
        rows.append({
            "trial": t.number, "state": t.state.name, "score": r.score, "score_spread": r.score_spread,
            "params": r.params, "flops": r.flops,
            "latency_norm_ms": r.deciding_ms if r.latency_median_ms is not None else None,
            "latency_median_ms": r.latency_median_ms, "machine_speed": r.machine_speed,
            "latency_norm_low_ms": r.latency_norm_low_ms, "latency_norm_high_ms": r.latency_norm_high_ms,
            "latency_p90_ms": r.latency_p90_ms,
            "latency_iqr_ms": r.latency_iqr_ms, "latency_cached": r.latency_cached,
            "latency_source": r.latency_source, "latency_predicted_ms": r.latency_predicted_ms,
            "runtime": r.runtime,
            # --objective accuracy: validation accuracy after the last epoch trained (a pruned trial's too)
            "accuracy": r.accuracy, "epochs_trained": r.epochs_trained, "train_s": r.train_s,
            "feasible": is_feasible,
            "rechecked": rc is not None,
            "recheck_norm_ms": rc.figure_ms if rc else None,
            "recheck_median_ms": rc.median_ms if rc else None,
            "recheck_p90_ms": rc.p90_ms if rc else None,
            "dropped": bool(is_feasible and rc is not None and not rc.kept(recheck_limit_ms)),
            "error": r.error, "interrupted": r.cut_short,
            "retry_of": r.retry_of, "start": r.start,
            "finalist_accuracy": (finalists or {}).get(r.config_key) if r.config_key else None,
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "config_key": r.config_key,
            "config": json.dumps(r.config, sort_keys=False) if r.config is not None else None,
            **{f"param_{k}": v for k, v in t.params.items()},
        })
    if not rows:
        return pd.DataFrame(columns=TRIAL_COLUMNS)
    return pd.DataFrame(rows)


@dataclass
class SearchResult:
    """What run_search gives back: every trial, the ranking, the winner, and what this run did."""

    study_name: str
    study_dir: Path
    budget_ms: float
    runtime: str  # what every latency was measured on (the deployment's runtime)
    trials: pd.DataFrame  # every trial, one row each (see trials_frame)
    ranking: pd.DataFrame  # the feasible, re-checked survivors, best first
    best_config: dict[str, Any] | None
    interrupted: bool = False
    elapsed_s: float = 0.0
    files: dict[str, Path] = field(default_factory=dict)
    smallest_latency_ms: float | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    predictor_rejected: int | None = None  # candidates the predictor gate rejected in this run; None: no gate

    @property
    def feasible(self) -> bool:
        return not self.ranking.empty


__all__ = ["CONSTRAINT", "Recheck", "SearchResult", "TRIAL_COLUMNS", "TrialRecord", "counts_toward_target", "feasible",
           "rank_key", "trials_frame"]
