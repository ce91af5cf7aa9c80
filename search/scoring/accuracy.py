"""`--objective accuracy`: each feasible candidate is trained, and Optuna's pruner stops weak ones early.

The study measures a candidate's latency first, at the deployment setting; an over-budget candidate is
never trained. A feasible one is adapted to the data and trained (search.scoring.training) for up to `--epochs`;
its validation accuracy after every epoch goes to Optuna (`trial.report(accuracy, epoch)`), and when
the pruner (`--pruner`: Hyperband, successive halving, or none) says so the trial ends as PRUNED: it
counts toward the trial target but is never ranked. A completed trial's score is its validation
accuracy after the last epoch. Training holds the machine lock: a latency measured by another worker
while this one trains would be slowed by it.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, ContextManager, Protocol, runtime_checkable

import optuna
import torch

import container
from container import NetworkConfig

from search.scoring.data import Dataset
from search.scoring.proxies import Scores, count_flops, count_params
from search.scoring.training import (EpochCallback, TrainingData, TrainingResult, TrainingSettings, adapt_config,
                                     prepare, train)
from search.trials import TrialRecord

ACCURACY = "accuracy"
PRUNERS = ("hyperband", "halving", "none")
REDUCTION_FACTOR = 3  # Hyperband's default; successive halving uses the same, so the two differ only in brackets


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The pruner `--pruner NAME` names, with epochs as its resource (reported after each one)."""
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=REDUCTION_FACTOR)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=REDUCTION_FACTOR)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner {name!r}: valid pruners: {', '.join(PRUNERS)}")


@runtime_checkable
class TrainingScorer(Protocol):
    """A Scorer whose score is trained accuracy, reported epoch by epoch (so that a trial can be pruned)."""

    objective: str

    def evaluate(self, config: NetworkConfig, on_epoch: EpochCallback | None = None) -> Scores: ...

    def size(self, config: NetworkConfig) -> tuple[int, int]: ...


class AccuracyScorer:
    """Validation accuracy of the searched architecture, adapted to `dataset` and trained at `settings`.

    #params and FLOPs are those of the deployed network (the one whose latency was measured)."""

    objective = ACCURACY

    def __init__(self, dataset: Dataset, settings: TrainingSettings, *, seed: int = 0,
                 lock: ContextManager[Any] | None = None):
        self.dataset, self.settings, self.seed = dataset, settings, seed
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self._prepared: dict[int, TrainingData] = {}  # by input side: the space's patch sizes fix it
        self.last: TrainingResult | None = None

    def adapt(self, config: NetworkConfig) -> NetworkConfig:
        d = self.dataset
        return adapt_config(config, channels=d.channels, height=d.height, width=d.width,
                            num_classes=d.num_classes, width_div=self.settings.width_div)

    def data(self, side: int) -> TrainingData:
        if side not in self._prepared:
            self._prepared[side] = prepare(self.dataset, self.settings, self.seed, side)
        return self._prepared[side]

    def size(self, config: NetworkConfig) -> tuple[int, int]:
        with torch.random.fork_rng(devices=[]):
            model = container.build(config)
        return count_params(model), count_flops(model, config)

    def train(self, config: NetworkConfig, on_epoch: EpochCallback | None = None) -> TrainingResult:
        adapted = self.adapt(config)
        with self.lock:
            return train(adapted, self.data(adapted.image_size), self.settings, self.seed, on_epoch)

    def evaluate(self, config: NetworkConfig, on_epoch: EpochCallback | None = None) -> Scores:
        params, flops = self.size(config)
        self.last = result = self.train(config, on_epoch)
        return Scores(result.accuracy, params, flops)


def train_trial(trial: optuna.Trial, scorer: TrainingScorer, config: NetworkConfig, *, report: bool,
                record: TrialRecord | None = None) -> Scores:
    """Train `config` in `trial`: record the learning curve and training time in its TrialRecord (`record`, the
    trial's own, or a new one); with `report`, give Optuna each epoch's accuracy and end the trial as pruned when
    the pruner says so. (Optuna cannot prune a two-objective study, so `--pareto` trains every feasible candidate
    to the end.)"""
    record = record if record is not None else TrialRecord()
    params, flops = scorer.size(config)
    record.params, record.flops = int(params), int(flops)
    record.write(trial)
    curve: list[float] = []
    start = time.perf_counter()

    def on_epoch(epoch: int, accuracy: float) -> None:
        curve.append(accuracy)
        record.learning_curve = list(curve)
        record.epochs_trained = epoch
        record.accuracy = accuracy
        record.train_s = time.perf_counter() - start
        record.write(trial)
        if report:
            trial.report(accuracy, epoch)
            if trial.should_prune():
                record.pruned_at_epoch = epoch
                record.write(trial)
                raise optuna.TrialPruned(f"validation accuracy {accuracy:.4f} after epoch {epoch}")

    scores = scorer.evaluate(config, on_epoch=on_epoch)
    record.train_s = time.perf_counter() - start
    record.write(trial)
    return scores


def is_training_scorer(scorer: Any) -> bool:
    return getattr(scorer, "objective", None) == ACCURACY and isinstance(scorer, TrainingScorer)


def curve_of(trial: optuna.trial.FrozenTrial) -> list[tuple[int, float]]:
    """(epoch, validation accuracy) of a trial: Optuna's intermediate values, else the recorded curve."""
    if trial.intermediate_values:
        return sorted((int(k), float(v)) for k, v in trial.intermediate_values.items() if math.isfinite(v))
    return [(i + 1, float(v)) for i, v in enumerate(TrialRecord.of(trial).learning_curve or [])]


__all__ = ["ACCURACY", "AccuracyScorer", "PRUNERS", "TrainingScorer", "curve_of", "is_training_scorer",
           "make_pruner", "train_trial"]
