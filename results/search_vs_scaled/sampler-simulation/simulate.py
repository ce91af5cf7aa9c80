"""Sampler settings for the search, tried offline: TPE variants against a latency model fitted to this machine's
measured networks, instead of 30-minute compare runs.

The model: every network the compare and search runs measured on the fast runtime (batch 1, 224 px, 2 threads,
the `latency_cache.json` files under results/), its normalised latency fitted by non-negative least squares (relative
error) on per-stage, per-kind terms: blocks, tokens x dim, the MLP's and the projections' GEMM work, the token-mixing
products and the depthwise window, plus the patch embeddings. The search is replayed as it runs (the default space, the
scaled family's fitting members enqueued first, the latency constraint, the #params objective, 30 trials) with
the model's latency times a 3% log-normal noise (a measurement's), and each setting is scored by the largest #params
among the trials that fit: what the search's finalists are drawn from (#params ranks trained accuracy best here).

Run from the repository root: .venv/bin/python results/search_vs_scaled/sampler-simulation/simulate.py
(measured.json holds the networks it fits; `--collect` writes it again from this checkout's latency caches).
"""
import glob
import json
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import optuna
import torch
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import container
from search.latency import Latency
from search.scaled import base_network, starting_params
from search.space import SearchSpace
from search.trials import CONSTRAINT

optuna.logging.set_verbosity(optuna.logging.ERROR)
torch.set_num_threads(1)
KINDS = ("attn", "attn_mlp", "conv", "mix")
TERMS = 6


def features(config: dict) -> np.ndarray:
    x = np.zeros(TERMS * len(KINDS) + 3)
    side, previous = config["image_size"], config["in_chans"]
    for s in config["stages"]:
        side //= s["patch_size"]
        tokens, dim, depth, ratio, kernel = side * side, s["dim"], s["depth"], s["mlp_ratio"], s["kernel_size"]
        b = KINDS.index(s["kind"]) * TERMS
        x[b:b + TERMS] += depth * np.array([1, tokens * dim / 1e6, tokens * dim * dim * ratio / 1e9,
                                            tokens * dim * dim / 1e9, tokens * tokens * dim / 1e9,
                                            tokens * dim * kernel * kernel / 1e9])
        x[-3] += tokens * dim * previous * s["patch_size"] ** 2 / 1e9
        previous = dim
    x[-2], x[-1] = 1.0, len(config["stages"])
    return x


MEASURED = Path(__file__).with_name("measured.json")  # the networks the model is fitted to (collect() wrote it)


def collect() -> dict:
    """Every network measured on the fast runtime at batch 1, 224 px, 2 threads, in the latency caches under the
    results root (the compare and search runs' folders, git-ignored): its median normalised latency."""
    figures: dict[str, list[float]] = {}
    for path in glob.glob("results/**/latency_cache.json", recursive=True):
        for entry in json.loads(Path(path).read_text()).get("entries", {}).values():
            d = entry.get("deployment", {})
            norm = entry["latency"].get("norm_ms")
            if (d.get("runtime"), d.get("batch_size"), d.get("image_size"), d.get("threads")) == ("fast", 1, 224, 2) \
                    and norm is not None:
                figures.setdefault(json.dumps(entry["config"], sort_keys=True), []).append(norm)
    return {"what": "each network's median latency_norm_ms over its measurements on this machine (Intel Xeon, fast "
                    "runtime, batch 1, 224 px, 2 threads), from the latency_cache.json files of the compare and "
                    "search runs of 2026-12-07 (git-ignored result folders)",
            "networks": [{"config": json.loads(k), "norm_ms": float(np.median(v))} for k, v in figures.items()]}


def measured() -> tuple[list[dict], np.ndarray]:
    networks = json.loads(MEASURED.read_text())["networks"]
    return [n["config"] for n in networks], np.array([n["norm_ms"] for n in networks])


def fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return nnls(x / y[:, None], np.ones_like(y))[0]  # least squares on the relative error


if "--collect" in sys.argv:
    MEASURED.write_text(json.dumps(collect(), separators=(",", ":")))
configs, latency = measured()
X = np.array([features(c) for c in configs])
folds = np.array_split(np.random.default_rng(0).permutation(len(latency)), 5)
errors = np.concatenate([np.abs(X[f] @ fit(np.delete(X, f, 0), np.delete(latency, f)) / latency[f] - 1) for f in folds])
COEF = fit(X, latency)
SPACE = SearchSpace.default()
BASE = base_network(SPACE, 224)


class ModelLatency:
    def measure(self, config):
        ms = float(features(config.to_dict()) @ COEF)
        return Latency(median_ms=ms, p90_ms=ms, norm_ms=ms)


@lru_cache(maxsize=None)
def params_of(key: str) -> int:
    return sum(p.numel() for p in container.build(container.NetworkConfig.from_dict(json.loads(key))).parameters())


def search(budget: float, seed: int, setting: dict, trials: int = 30, noise: float = 0.03) -> int:
    """The largest #params among the trials that fit, in one replayed search."""
    rng = np.random.default_rng(seed * 1000 + int(budget))
    starts = starting_params(SPACE, BASE, budget, ModelLatency()) if setting.get("start", True) else []
    if setting.get("random"):
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        startup = setting.get("n_startup", 10) + (len(starts) if setting.get("startup_plus_starts") else 0)
        options = {"seed": seed, "n_startup_trials": startup}
        if "gamma" in setting:
            options["gamma"] = lambda n, g=setting["gamma"]: min(int(math.ceil(g * n)), 25)
        for name in ("n_ei_candidates", "consider_endpoints", "multivariate"):
            if name in setting:
                options[name] = setting[name]
        sampler = optuna.samplers.TPESampler(**options)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for params in starts:
        study.enqueue_trial(params, skip_if_exists=True)
    best = 0

    def objective(trial):
        nonlocal best
        config = SPACE.suggest(trial, 224)
        ms = float(features(config.to_dict()) @ COEF) * float(np.exp(rng.normal(0, noise)))
        trial.set_constraint(CONSTRAINT, ms - budget)
        params = params_of(json.dumps(config.to_dict(), sort_keys=True))
        if ms <= budget:
            best = max(best, params)
        return params

    study.optimize(objective, n_trials=trials)
    return best


def table(settings: dict, budgets, seeds) -> None:
    shipped = {b: np.array([search(b, s, {}) for s in seeds]) for b in budgets}
    print(f"| setting | {' | '.join(f'{b} ms' for b in budgets)} |")
    print(f"| --- |{' ---: |' * len(budgets)}")
    print(f"| TPE as shipped | {' | '.join(f'{shipped[b].mean() / 1e6:.2f} M' for b in budgets)} |", flush=True)
    for name, setting in settings.items():
        cells = []
        for b in budgets:
            d = (np.array([search(b, s, setting) for s in seeds]) - shipped[b]) / 1e6
            cells.append(f"{d.mean():+.2f} +- {d.std(ddof=1) / math.sqrt(len(d)):.2f}")
        print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    print(f"{len(latency)} measured networks, {latency.min():.1f}-{latency.max():.1f} ms; the model's 5-fold "
          f"cross-validated error: median {np.median(errors):.1%}, 90th percentile {np.quantile(errors, 0.9):.1%}\n")
    print("Seeds 0-19: the mean largest fitting #params as shipped, then each setting's paired difference (M, +- SE)\n")
    table({"random search (no start)": {"random": True, "start": False},
           "no family start": {"start": False},
           "startup 10 + the starts": {"startup_plus_starts": True},
           "n_ei_candidates 100": {"n_ei_candidates": 100},
           "consider_endpoints": {"consider_endpoints": True},
           "gamma 0.25": {"gamma": 0.25}}, (12, 20, 30), range(20))
    print("\nThe best at 12 ms, again on new seeds 20-59\n")
    table({"startup 10 + the starts": {"startup_plus_starts": True}}, (12, 16, 20, 30), range(20, 60))
