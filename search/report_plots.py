"""The plots of a study's report: score against latency, the history, learning curves, parameter importances."""
from __future__ import annotations

import math
import warnings
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd

from search.scoring.accuracy import curve_of


def plot_score_vs_latency(trials: pd.DataFrame, rank: pd.DataFrame, budget_ms: float, objective: str):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = trials[trials["state"] == "COMPLETE"]
    score = pd.to_numeric(done["score"], errors="coerce")
    lat = pd.to_numeric(done["latency_norm_ms"], errors="coerce")
    feas = done["feasible"].astype(bool) & ~done["dropped"].astype(bool)
    dropped = done["dropped"].astype(bool)
    over = ~done["feasible"].astype(bool)
    finite = score.notna() & np.isfinite(score.fillna(0))
    ax.scatter(lat[feas & finite], score[feas & finite], s=22, c="tab:blue", label="feasible", zorder=3)
    if (dropped & finite).any():
        ax.scatter(lat[dropped & finite], score[dropped & finite], s=40, marker="s", facecolors="none",
                   edgecolors="tab:orange", label="dropped on re-measurement", zorder=3)
    if (over & finite).any():
        ax.scatter(lat[over & finite], score[over & finite], s=22, marker="x", c="tab:red", label="over budget")
    unscored = over & ~finite
    if unscored.any():
        ax.plot(lat[unscored], np.zeros(int(unscored.sum())), "|", color="tab:gray", markersize=12,
                transform=ax.get_xaxis_transform(), label="over budget (not scored)")
    front = rank[rank["pareto"].astype(bool)].sort_values("latency_norm_ms")
    if len(front):
        ax.step(front["latency_norm_ms"], pd.to_numeric(front["score"]), where="post", color="tab:green",
                lw=1.5, label="Pareto front (feasible)", zorder=2)
    ax.axvline(budget_ms, color="black", ls="--", lw=1, label=f"budget {budget_ms:g} ms")
    ax.set_xlabel("latency, median at the machine's reference speed (ms)")
    ax.set_ylabel(f"score ({objective})")
    ax.set_title("score against latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_history(trials: pd.DataFrame, objective: str):
    fig, ax = plt.subplots(figsize=(7, 4))
    t = trials.sort_values("trial")
    feas = t["feasible"].astype(bool) & ~t["dropped"].astype(bool)
    score = pd.to_numeric(t["score"], errors="coerce").where(feas)
    best = score.cummax().ffill()
    ax.scatter(t["trial"][feas], score[feas], s=18, c="tab:blue", alpha=0.6, label="feasible trial")
    ax.step(t["trial"], best, where="post", color="tab:green", label="best feasible so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"score ({objective})")
    ax.set_title("best feasible score against trial number")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_learning_curves(trials: list[optuna.trial.FrozenTrial], winner: int | None):
    """Validation accuracy after each epoch, one line per trained trial: pruned ones dashed and ending in x."""
    curves = [(t, curve_of(t)) for t in trials]
    curves = [(t, c) for t, c in curves if c]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled: set[str] = set()
    for t, curve in curves:
        epochs, values = zip(*curve)
        pruned = t.state == optuna.trial.TrialState.PRUNED
        label = f"winner (trial {t.number})" if t.number == winner else "pruned" if pruned else "trained to the end"
        style = (dict(color="tab:green", lw=2.2, zorder=4) if t.number == winner else
                 dict(color="tab:gray", ls="--", lw=1, alpha=0.7) if pruned else
                 dict(color="tab:blue", lw=1, alpha=0.7))
        ax.plot(epochs, values, marker="o", markersize=3, label=None if label in labelled else label, **style)
        labelled.add(label)
        if pruned:
            ax.plot(epochs[-1], values[-1], "x", color="tab:red", markersize=7, zorder=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("learning curves (intermediate values reported to the pruner)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def importances(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], value: Any) -> dict[str, float]:
    """Parameter importances (Optuna's default evaluator) of `value(trial)` over `trials`."""
    usable = [t for t in trials if t.params and value(t) is not None and math.isfinite(value(t))]
    if len(usable) < 3:
        return {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        scratch = optuna.create_study(direction="maximize")
        scratch.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions, value=value(t))
                            for t in usable])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return optuna.importance.get_param_importances(scratch)
    except Exception:
        return {}
    finally:
        optuna.logging.set_verbosity(verbosity)


def plot_importances(score_imp: dict[str, float], latency_imp: dict[str, float]):
    panels = [(name, imp) for name, imp in (("score (feasible trials)", score_imp),
                                             ("latency (all trials)", latency_imp)) if imp]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.35 * max(len(i) for _, i in panels) + 1.5),
                             squeeze=False)
    for ax, (name, imp) in zip(axes[0], panels):
        items = sorted(imp.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set_title(f"importance for {name}", fontsize=10)
        ax.set_xlabel("importance")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# --- the report ----------------------------------------------------------------------------------------


__all__ = ["importances", "plot_history", "plot_importances", "plot_learning_curves", "plot_score_vs_latency"]
