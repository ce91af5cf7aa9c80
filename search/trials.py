"""A study's trials: which are feasible, which count toward the target, their order, and their table.

The report and the progress display read trials through this module, not through the study.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from optuna.trial import FrozenTrial, TrialState

CONSTRAINT = "latency_ms"  # latency median - budget; feasible when <= 0

TRIAL_COLUMNS = ["trial", "state", "score", "score_spread", "params", "flops", "latency_norm_ms", "latency_median_ms",
                 "machine_speed", "latency_norm_low_ms", "latency_norm_high_ms", "latency_p90_ms",
                 "latency_iqr_ms", "latency_cached", "latency_source", "latency_predicted_ms", "runtime", "accuracy",
                 "epochs_trained", "train_s", "feasible",
                 "rechecked", "recheck_norm_ms", "recheck_median_ms", "recheck_p90_ms", "dropped", "error",
                 "interrupted", "retry_of", "duration_s", "config_key", "config"]


def feasible(trial: FrozenTrial) -> bool:
    """Complete and within budget by its constraint. A latency that was only predicted is never feasible:
    the predictor gate answers only for candidates clearly over budget, and nothing unmeasured is ranked."""
    return (trial.state == TrialState.COMPLETE and bool(trial.constraints)
            and all(v <= 0 for v in trial.constraints.values())
            and trial.user_attrs.get("latency_source") != "predicted")


def counts_toward_target(trial: FrozenTrial) -> bool:
    """Finished trials count (a pruned one too: trained, not to the end, and never ranked); trials lost to a
    kill or Ctrl-C do not (they are retried)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and not (trial.user_attrs.get("interrupted") or trial.user_attrs.get("lost"))


def rank_key(t: FrozenTrial) -> tuple[float, float, int]:
    """Best score first, then faster, then earlier."""
    score = t.user_attrs.get("score")
    return (-(score if score is not None else -math.inf), deciding_ms(t.user_attrs), t.number)


def _kept(recheck: dict[str, Any], limit_ms: float) -> bool:
    """A re-checked trial stays when its decided figure (the mean of its first and re-checked figures; in a study
    from before that, the re-checked one alone) is within the limit."""
    figure = recheck.get("decided_ms", recheck.get("norm_ms", recheck.get("median_ms")))
    return figure is not None and figure <= limit_ms


def deciding_ms(attrs: dict[str, Any]) -> float:
    """The latency a trial was decided on: at the machine's reference speed (`latency_norm_ms`), or as measured
    in a study from before normalisation."""
    value = attrs.get("latency_norm_ms", attrs.get("latency_median_ms"))
    return math.inf if value is None else float(value)


def trials_frame(trials: list[FrozenTrial], recheck_limit_ms: float,
                 rechecks: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per trial: state, score, #params, FLOPs, latency, feasibility, re-check, config.

    A feasible trial is `dropped` when its re-measured median exceeds `recheck_limit_ms` (or the
    re-measurement failed)."""
    rows = []
    for t in trials:
        a = t.user_attrs
        key = a.get("config_key")
        rc = rechecks.get(key) if key else None
        is_feasible = feasible(t)
        rows.append({
            "trial": t.number, "state": t.state.name, "score": a.get("score"), "score_spread": a.get("score_spread"),
            "params": a.get("params"), "flops": a.get("flops"),
            "latency_norm_ms": deciding_ms(a) if a.get("latency_median_ms") is not None else None,
            "latency_median_ms": a.get("latency_median_ms"), "machine_speed": a.get("machine_speed"),
            "latency_norm_low_ms": a.get("latency_norm_low_ms"), "latency_norm_high_ms": a.get("latency_norm_high_ms"),
            "latency_p90_ms": a.get("latency_p90_ms"),
            "latency_iqr_ms": a.get("latency_iqr_ms"), "latency_cached": a.get("latency_cached"),
            "latency_source": a.get("latency_source"), "latency_predicted_ms": a.get("latency_predicted_ms"),
            "runtime": a.get("runtime"),
            # --objective accuracy: validation accuracy after the last epoch trained (a pruned trial's too)
            "accuracy": a.get("accuracy"), "epochs_trained": a.get("epochs_trained"), "train_s": a.get("train_s"),
            "feasible": is_feasible,
            "rechecked": rc is not None,
            "recheck_norm_ms": rc.get("norm_ms", rc.get("median_ms")) if rc else None,
            "recheck_median_ms": rc.get("median_ms") if rc else None,
            "recheck_p90_ms": rc.get("p90_ms") if rc else None,
            "dropped": bool(is_feasible and rc is not None and not _kept(rc, recheck_limit_ms)),
            "error": a.get("error"), "interrupted": bool(a.get("interrupted") or a.get("lost")),
            "retry_of": a.get("retry_of"),
            "duration_s": t.duration.total_seconds() if t.duration else None,
            "config_key": key,
            "config": json.dumps(a["config"], sort_keys=False) if "config" in a else None,
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
    predictor_rejected: int = 0  # candidates rejected by the latency predictor in this run, unmeasured

    @property
    def feasible(self) -> bool:
        return not self.ranking.empty


__all__ = ["CONSTRAINT", "SearchResult", "TRIAL_COLUMNS", "counts_toward_target", "feasible",
           "rank_key", "trials_frame"]
