"""The finalists: the search's winner is chosen by trained accuracy among a few candidates, not by #params alone.

#params ranks trained accuracy well across the space (Spearman 0.82 on Fashion-MNIST), but among the largest networks
that fit a loose budget it does not: there a scaled Container-Light with fewer parameters trained better than the
search's #params winners (results/search_vs_scaled/). So after the re-check the search trains its finalists at the
validation's low fidelity and ranks them by validation accuracy: the top `finalists` distinct architectures by the
objective, and the best scaled Container-Light member it started from (search.scaled). The validation split is held
out of the training images; the test split is never used to choose. Each finalist trains with `seeds` training seeds
(`training_seeds`: the search's seed + SEED_OFFSET, + 2 x SEED_OFFSET, ...), so that an evaluation with training seeds
0, 1, ... never re-uses the run the choice was made on; its accuracy is their mean. With a `margin`, the best scaled
start stays the winner unless another finalist's accuracy is higher by more than it (search.report.ranking): one
training's validation accuracy varies by 1.65 points (standard deviation) from seed to seed at this fidelity
(results/search_vs_scaled/), so a difference of a point or two between finalists is mostly that noise.

Each training's accuracy is stored in the study (a user attribute per finalist and training seed, their mean read back
into the trials' `finalist_accuracy` column), with the data, fidelity and seed it was trained under: a resumed study
trains nothing twice, one resumed under other finalist settings trains again, and one resumed with more seeds trains
only the new ones. Without data (Fashion-MNIST not installed, and no
`--finalist-data`), or with `--finalists 0`, `--objective accuracy` (the score is trained accuracy already) or
`--pareto`, the winner is the objective's best, as before.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ContextManager, Sequence

import pandas as pd
from container import NetworkConfig

from search.report import ranking
from search.scoring.accuracy import AccuracyScorer
from search.settings import Finalists

SEED_OFFSET = 10_000


def choose(frame: pd.DataFrame, count: int) -> list[int]:
    """The finalists' trial numbers: the top `count` distinct architectures of the ranking (feasible, kept by the
    re-check, best by the objective) and the best of those the study started from the scaled family."""
    ranked = ranking(frame)
    if ranked.empty or count == 0:
        return []
    unique = ranked[ranked["duplicate_of"].isna()]
    chosen = [int(t) for t in unique["trial"][:count]]
    started = frame.set_index("trial")["start"] if "start" in frame else pd.Series(dtype=object)
    scaled = [int(t) for t in unique["trial"] if started.get(t) == "scaled"]
    if scaled and scaled[0] not in chosen:
        chosen.append(scaled[0])
    return chosen


def training_seeds(search_seed: int, count: int) -> list[int]:
    """The finalists' `count` training seeds: SEED_OFFSET + the search's seed, then 2 x SEED_OFFSET + it, ...; the
    first is the same whatever the count."""
    return [SEED_OFFSET * (k + 1) + search_seed for k in range(count)]


def train_finalists(frame: pd.DataFrame, numbers: Sequence[int], settings: Finalists, seeds: Sequence[int],
                    trained: Callable[[str, int], bool], store: Callable[[str, int, float], None],
                    lock: ContextManager[Any]) -> int:
    """Train each finalist (by trial number in `frame`, the trials' table) with each training seed in `seeds` it was
    not `trained` with yet, and `store(config_key, seed, validation accuracy)`; returns how many trainings ran.
    Nothing when fewer than two are to be compared or there is no data."""
    dataset = settings.dataset()
    if len(numbers) < 2 or dataset is None:
        return 0
    rows = frame.set_index("trial").loc[list(numbers)]
    ran = 0
    for seed in seeds:
        todo = [(key, config) for key, config in zip(rows["config_key"], rows["config"]) if not trained(key, seed)]
        scorer = AccuracyScorer(dataset, settings.training, seed=seed, lock=lock)
        for key, config in todo:
            accuracy = scorer.train(NetworkConfig.from_json(config)).accuracy
            if math.isfinite(accuracy):
                store(key, seed, accuracy)
        ran += len(todo)
    return ran


__all__ = ["SEED_OFFSET", "choose", "train_finalists", "training_seeds"]
