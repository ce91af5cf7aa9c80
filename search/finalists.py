"""The finalists: the search's winner is chosen by trained accuracy among a few candidates, not by #params alone.

#params ranks trained accuracy well across the space (Spearman 0.82 on Fashion-MNIST), but among the largest networks
that fit a loose budget it does not: there a scaled Container-Light with fewer parameters trained better than the
search's #params winners (results/search_vs_scaled/). So after the re-check the search trains its finalists at the
validation's low fidelity and ranks them by validation accuracy: the top `finalists` distinct architectures by the
objective, and the best scaled Container-Light member it started from (search.scaled). The validation split is held
out of the training images; the test split is never used to choose. Their training seed is the search's seed +
SEED_OFFSET, so that an evaluation with training seeds 0, 1, ... never re-uses the run the choice was made on.

Each finalist's accuracy is stored in the study (a user attribute `finalist:<config_key>`, read back into the trials'
`finalist_accuracy` column), with the data, fidelity and seed it was trained under: a resumed study trains nothing
twice, and one resumed under other finalist settings trains again. Without data (Fashion-MNIST not installed, and no
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


def train_finalists(frame: pd.DataFrame, numbers: Sequence[int], settings: Finalists, seed: int,
                    store: Callable[[str, float], None], lock: ContextManager[Any]) -> int:
    """Train each finalist (by trial number in `frame`, the trials' table) not trained yet and `store(config_key,
    validation accuracy)`; returns how many were trained. Nothing when fewer than two are to be compared or there
    is no data."""
    dataset = settings.dataset()
    if len(numbers) < 2 or dataset is None:
        return 0
    rows = frame.set_index("trial").loc[list(numbers)]
    todo = rows[rows["finalist_accuracy"].isna()]
    scorer = AccuracyScorer(dataset, settings.training, seed=SEED_OFFSET + seed, lock=lock)
    for config_key, config in zip(todo["config_key"], todo["config"]):
        accuracy = scorer.train(NetworkConfig.from_json(config)).accuracy
        if math.isfinite(accuracy):
            store(config_key, accuracy)
    return len(todo)


__all__ = ["SEED_OFFSET", "choose", "train_finalists"]
