"""The predictor gate, tried offline on the latency model of simulate.py before it was measured for real.

The search is replayed as in simulate.py (the default space, the scaled starts, the constraint, the #params objective,
3% measurement noise), with a latency predictor in front of the measurement: a proposal the predictor puts above
budget x (1 + margin) is answered with its prediction and not measured, as search.latency.PredictorGate does. The
predictor's error is a fixed log-normal factor per network (5% by default; the real predictor fits its calibration
networks to 2.7% on this machine). Each setting is scored by the largest #params among the measured trials that fit,
as a paired difference from TPE as shipped before the gate (30 trials, every one measured).

Run from the repository root: .venv/bin/python results/search_vs_scaled/sampler-simulation/predictor_gate.py
(about 10 minutes on 2 cores; output: predictor_gate.md).
"""
import json
import math
import sys
import zlib
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import simulate as S  # fits the latency model on import


def search_gate(budget: float, seed: int, trials: int, sigma_p: float = 0.05, margin: float = 0.10,
                measured_cap: int | None = None, noise: float = 0.03) -> tuple[int, int]:
    """(the largest #params among the measured trials that fit, how many trials were measured)."""
    rng = np.random.default_rng(seed * 1000 + int(budget))
    starts = S.starting_params(S.SPACE, S.BASE, budget, S.ModelLatency())
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for p in starts:
        study.enqueue_trial(p, skip_if_exists=True)
    best, measured = 0, 0

    def objective(trial):
        nonlocal best, measured
        config = S.SPACE.suggest(trial, 224)
        key = json.dumps(config.to_dict(), sort_keys=True)
        true = float(S.features(config.to_dict()) @ S.COEF)
        predicted = true * float(np.exp(np.random.default_rng(zlib.crc32(key.encode())).normal(0, sigma_p)))
        params = S.params_of(key)
        if predicted > budget * (1 + margin):
            trial.set_constraint(S.CONSTRAINT, predicted - budget)
            return params
        measured += 1
        ms = true * float(np.exp(rng.normal(0, noise)))
        trial.set_constraint(S.CONSTRAINT, ms - budget)
        if ms <= budget:
            best = max(best, params)
        if measured_cap and measured >= measured_cap:
            trial.study.stop()
        return params

    study.optimize(objective, n_trials=trials)
    return best, measured


def table(settings: dict, budgets, seeds) -> None:
    shipped = {b: np.array([S.search(b, s, {}) for s in seeds]) for b in budgets}
    print(f"| setting | {' | '.join(f'{b} ms' for b in budgets)} |")
    print(f"| --- |{' ---: |' * len(budgets)}")
    print(f"| TPE as shipped before (the mean) | {' | '.join(f'{shipped[b].mean() / 1e6:.2f} M' for b in budgets)} |",
          flush=True)
    for name, kw in settings.items():
        cells = []
        for b in budgets:
            r = [search_gate(b, s, **kw) for s in seeds]
            d = (np.array([x[0] for x in r]) - shipped[b]) / 1e6
            cells.append(f"{d.mean():+.2f} +- {d.std(ddof=1) / math.sqrt(len(d)):.2f} "
                         f"({np.mean([x[1] for x in r]):.0f} measured)")
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print("Seeds 0-19: paired difference from TPE as shipped before the gate (M, +- SE), and trials measured\n")
    table({"gate, 30 trials in all": dict(trials=30),
           "gate, 30 measured (rejections do not count)": dict(trials=300, measured_cap=30),
           "gate, 60 trials in all": dict(trials=60),
           "gate, 60 trials in all, predictor error 8%": dict(trials=60, sigma_p=0.08),
           "gate, 60 trials in all, margin 5%": dict(trials=60, margin=0.05)}, (12, 20, 30), range(20))
    print("\nThe shipped rule (30 measured) again on new seeds 20-59\n")
    table({"gate, 30 measured (rejections do not count)": dict(trials=300, measured_cap=30),
           "the same, predictor error 10%": dict(trials=300, measured_cap=30, sigma_p=0.10)},
          (12, 16, 20, 30), range(20, 60))
