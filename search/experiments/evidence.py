"""The evidence protocol shared by `validate-proxy` and `compare`: train an architecture at the validation's
fidelity and measure its accuracy on the data's test split, train a comparison's winners once each (WinnerTrainer),
and the rank statistics the reports publish.

Training is search.scoring.training's (the same adaptation rule and loop as `--objective accuracy`). The validation
split held out of the training set gives the per-epoch curve (its first point is the one-epoch, low-fidelity score); the
test split gives the measured accuracy after the last epoch and is never used to choose anything.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from bench.kit import write_table
from container import NetworkConfig

from search.scoring.data import Dataset, load_data
from search.space import SearchInputError
from search.scoring.training import TrainingData, TrainingSettings, adapt_config, prepare, resize, train

# validate-proxy's and compare's fidelity, sized by a pilot on Fashion-MNIST on a 2-core CPU (12 architectures
# x 2 seeds, 1 thread): seed-to-seed Spearman 0.87 [0.46, 0.98], 40 s per training on a busy machine. 3 epochs on
# 2000 images were as fast but far noisier (seed-to-seed standard deviation 0.9 points against 0.3); 2 epochs on
# 6000 were quieter still (0.26) but slower than the hour allows.
VALIDATION_TRAINING = TrainingSettings(epochs=2, train_images=4000, val_images=1000, width_div=8)
VALIDATION_SEEDS = (0, 1)
DATA_SEED = 0  # draws the training subset and the validation split once: every architecture sees the same images


# --- training to a test accuracy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trained:
    """One training run of the protocol."""

    val_curve: list[float]  # validation accuracy after each epoch
    test_accuracy: float  # after the last epoch
    train_s: float
    final_loss: float

    @property
    def one_epoch(self) -> float:
        """Validation accuracy after the first epoch (NaN when the run has a single epoch)."""
        return self.val_curve[0] if self.val_curve else math.nan


class ValidationProtocol:
    """Train architectures of the search space on `dataset` at `settings`; test accuracy after the last epoch."""

    def __init__(self, dataset: Dataset, settings: TrainingSettings = VALIDATION_TRAINING, *,
                 data_seed: int = DATA_SEED):
        if settings.epochs < 2:
            raise SearchInputError(f"--epochs {settings.epochs}: the validation needs >= 2 (the first epoch's "
                                   f"validation accuracy is the one-epoch baseline)")
        self.dataset, self.settings, self.data_seed = dataset, settings, data_seed
        self._prepared: dict[int, tuple[TrainingData, torch.Tensor]] = {}

    def adapt(self, config: NetworkConfig) -> NetworkConfig:
        d = self.dataset
        return adapt_config(config, channels=d.channels, height=d.height, width=d.width, num_classes=d.num_classes,
                            width_div=self.settings.width_div)

    def _data(self, side: int) -> tuple[TrainingData, torch.Tensor]:
        if side not in self._prepared:
            self._prepared[side] = (prepare(self.dataset, self.settings, self.data_seed, side),
                                    resize(self.dataset.x_test, side))
        return self._prepared[side]

    def train(self, config: NetworkConfig, seed: int) -> Trained:
        """`config` as searched (deployed size); it is adapted to the data here."""
        adapted = self.adapt(config)
        data, x_test = self._data(adapted.image_size)
        result = train(adapted, data, self.settings, seed, test=(x_test, self.dataset.y_test))
        return Trained(val_curve=result.curve, test_accuracy=result.test_accuracy, train_s=result.train_s,
                       final_loss=result.final_loss)

    def describe(self) -> str:
        return self.settings.describe(len(self.dataset.y_train))


# --- trainings in parallel -----------------------------------------------------------------------------------


_WORKER_PROTOCOL: ValidationProtocol | None = None


def _start_worker(data: str | Path | Dataset, settings: TrainingSettings, data_seed: int) -> None:
    global _WORKER_PROTOCOL
    dataset = data if isinstance(data, Dataset) else load_data(data)
    _WORKER_PROTOCOL = ValidationProtocol(dataset, settings, data_seed=data_seed)


def _train_in_worker(config_json: str, seed: int) -> Trained:
    assert _WORKER_PROTOCOL is not None, "the worker was not started"
    return _WORKER_PROTOCOL.train(NetworkConfig.from_json(config_json), seed)


def worker_threads(workers: int, threads: int | None) -> int | None:
    """Intra-op threads per training: `threads` when given, else the cores shared out (None with one worker:
    torch's default)."""
    if threads is not None or workers == 1:
        return threads
    return max(1, (os.cpu_count() or 1) // workers)


class TrainingPool:
    """Runs the protocol's trainings in `workers` processes (spawned, each loading the data once), or in this
    process with one worker. A training is seeded and runs at a fixed thread count, so its accuracy does not
    depend on which process ran it or what ran beside it; only the wall time does."""

    def __init__(self, protocol: ValidationProtocol, data: str | Path | Dataset, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise SearchInputError(f"--workers {workers}: must be an integer >= 1")
        self.protocol, self.data, self.workers = protocol, data, workers

    def run(self, jobs: Iterable[tuple[Hashable, NetworkConfig, int]]) -> Iterator[tuple[Hashable, Trained]]:
        """(key, result) for each (key, config, seed) job, in the order they finish."""
        jobs = list(jobs)
        if self.workers == 1 or len(jobs) <= 1:
            for key, config, seed in jobs:
                yield key, self.protocol.train(config, seed)
            return
        p = self.protocol
        settings = replace(p.settings, threads=worker_threads(self.workers, p.settings.threads))
        with ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                 initargs=(self.data, settings, p.data_seed)) as pool:
            pending: dict[Future, Hashable] = {pool.submit(_train_in_worker, config.to_json(), seed): key
                                               for key, config, seed in jobs}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        yield pending.pop(future), future.result()
            finally:
                for future in pending:
                    future.cancel()


# --- a comparison's winners ----------------------------------------------------------------------------------


class WinnerTrainer:
    """Trains winners with the validation protocol, once per architecture and training seed (trainings.csv)."""

    def __init__(self, pool: TrainingPool, path: Path, identity: dict[str, Any]):
        self.pool, self.path, self.identity = pool, path, json.dumps(identity, sort_keys=True)
        self.rows: list[dict[str, Any]] = []
        try:
            old = pd.read_csv(path)
            self.rows = old[old["protocol"] == self.identity].to_dict(orient="records")
        except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
            pass

    def _stored(self, config: NetworkConfig, seed: int) -> float | None:
        key = config.to_json(sort_keys=True)
        return next((float(r["accuracy"]) for r in self.rows if r["config"] == key and int(r["seed"]) == seed), None)

    def train(self, pairs: Sequence[tuple[NetworkConfig, int]], advance: Callable[[str], None]) -> None:
        """Train every (config, seed) not trained yet, in the pool; each result is written as it comes."""
        jobs, seen = [], set()
        for config, seed in pairs:
            key = (config.to_json(sort_keys=True), seed)
            if key not in seen:
                seen.add(key)
                if self._stored(config, seed) is None:
                    jobs.append((key, config, seed))
        for (key, seed), result in self.pool.run(jobs):
            self.rows.append({"config": key, "seed": seed, "accuracy": result.test_accuracy,
                              "train_s": result.train_s, "protocol": self.identity})
            write_table(pd.DataFrame(self.rows), self.path)
            advance(f"winner {NetworkConfig.from_json(key).describe_short()}, training seed {seed}: "
                    f"test accuracy {result.test_accuracy:.3f}")

    def accuracy(self, config: NetworkConfig, seed: int) -> float:
        stored = self._stored(config, seed)
        if stored is None:
            raise KeyError(f"{config.describe_short()} seed {seed} was not trained")
        return stored


def winner_trainer(data: str | Path | Dataset, training: TrainingSettings, workers: int, out_dir: Path,
                   protocol: ValidationProtocol | None = None) -> tuple[Dataset, WinnerTrainer]:
    """The data set and the trainer of a comparison's winners (its trainings.csv in `out_dir`, reused on a rerun)."""
    dataset = data if isinstance(data, Dataset) else load_data(data)
    protocol = protocol or ValidationProtocol(dataset, training)
    return dataset, WinnerTrainer(TrainingPool(protocol, data, workers), out_dir / "trainings.csv",
                                  {"data": dataset.digest, "training": protocol.settings.identity()})


# --- statistics -------------------------------------------------------------------------------------------------


def finite_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """-inf or NaN (a degenerate score) ranks below every finite one."""
    v = np.asarray(values, dtype=float).copy()
    bad = ~np.isfinite(v)
    if bad.any():
        v[bad] = (np.min(v[~bad]) if (~bad).any() else 0.0) - 1.0
    return v


def rank_correlations(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Spearman's rho and Kendall's tau with percentile bootstrap 95% intervals (pairs resampled)."""
    from scipy.stats import kendalltau, spearmanr

    x, y = finite_ranks(x), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"rank correlations need >= 3 paired values (got {len(x)} and {len(y)})")
    rho, tau = spearmanr(x, y).statistic, kendalltau(x, y).statistic
    rng = np.random.default_rng(seed)
    boots_rho, boots_tau = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(x), len(x))
        xs, ys = x[idx], y[idx]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:  # a constant resample has no rank correlation
            continue
        boots_rho.append(spearmanr(xs, ys).statistic)
        boots_tau.append(kendalltau(xs, ys).statistic)
    lo_r, hi_r = np.nanpercentile(boots_rho, [2.5, 97.5]) if boots_rho else (math.nan, math.nan)
    lo_t, hi_t = np.nanpercentile(boots_tau, [2.5, 97.5]) if boots_tau else (math.nan, math.nan)
    return {"spearman": float(rho), "spearman_lo": float(lo_r), "spearman_hi": float(hi_r),
            "kendall": float(tau), "kendall_lo": float(lo_t), "kendall_hi": float(hi_t)}


def noise_ceiling(acc: pd.DataFrame, seeds: Sequence[int], *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """How well one training seed's accuracies rank the architectures like another's (columns arch, seed,
    accuracy; averaged over seed pairs): what a score could hope to reach. With the Spearman-Brown step-up
    to the mean over all seeds, and the mean seed-to-seed standard deviation of an architecture's accuracy."""
    wide = acc.pivot(index="arch", columns="seed", values="accuracy")
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    results = [rank_correlations(wide[a].to_numpy(), wide[b].to_numpy(), n_boot=n_boot, seed=seed) for a, b in pairs]
    out = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    k, r = len(seeds), out["spearman"]
    out["spearman_brown"] = float(k * r / (1 + (k - 1) * r)) if r > -1 / (k - 1) else math.nan
    out["seed_std_mean"] = float(acc.groupby("arch")["accuracy"].std().mean())
    return out


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean with a percentile bootstrap 95% interval."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(v.mean()), "lo": float(lo), "hi": float(hi), "n": int(len(v))}


SIZE_SCORES = ("params", "flops")


def supported_objective(correlations: pd.DataFrame) -> dict[str, Any]:
    """Which objective the evidence supports (rows: score, spearman, spearman_lo, training_free), and the
    plain sentence the reports print: the best training-free score by Spearman, and whether any
    training-free proxy beats both size counts."""
    free = correlations[correlations["training_free"]].sort_values("spearman", ascending=False)
    best = str(free.iloc[0]["score"])
    rho = dict(zip(free["score"], free["spearman"]))
    size_best = max((rho[s] for s in SIZE_SCORES if s in rho), default=-math.inf)
    proxies = free[~free["score"].isin(SIZE_SCORES)]
    beats = proxies[proxies["spearman"] > size_best]
    if len(beats) == 0:
        sentence = (f"No training-free proxy beats #params or FLOPs here: the best training-free score is "
                    f"`{best}` (Spearman rho {rho[best]:.2f}); the proxies reach at most "
                    f"{proxies['spearman'].max():.2f}.")
    else:
        names = ", ".join(f"`{s}` ({r:.2f})" for s, r in zip(beats["score"], beats["spearman"]))
        sentence = (f"The best training-free score is `{best}` (Spearman rho {rho[best]:.2f}); proxies that beat "
                    f"#params and FLOPs (best {size_best:.2f}): {names}.")
    low = float(free.iloc[0]["spearman_lo"])
    if not low > 0:
        sentence += f" Its 95% interval reaches {low:.2f}: not shown to track accuracy at all."
    return {"objective": best, "proxy_beats_size": bool(len(beats)), "sentence": sentence}


@contextlib.contextmanager
def training_progress(title: str, total: int, done: int, *, enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over trainings on stderr; yields `advance(text)`, called after each one."""
    if not enabled:
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), TextColumn("{task.fields[last]}"), console=Console(stderr=True)) as progress:
        task = progress.add_task(title, total=total, completed=done, last="")
        yield lambda text: progress.update(task, advance=1, last=text)


__all__ = ["DATA_SEED", "ValidationProtocol", "SIZE_SCORES", "Trained", "TrainingPool", "VALIDATION_SEEDS",
           "VALIDATION_TRAINING", "WinnerTrainer", "bootstrap_mean", "finite_ranks", "noise_ceiling",
           "rank_correlations", "supported_objective", "training_progress", "winner_trainer", "worker_threads"]
