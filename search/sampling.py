"""Seeded, uniform samples of architectures from a search space, without an Optuna study.

The predictor's calibration and accuracy sets and the proxy validation all draw architectures
this way: `sample_configs(space, n, seed, image_size)` gives `n` distinct NetworkConfigs, the same
ones for the same arguments on every machine (Python's `random.Random`, nothing else).
"""
from __future__ import annotations

import random
from typing import Any, Iterable, Sequence

from container import NetworkConfig

from search.space import SearchSpace


class RandomTrial:
    """Just enough of an Optuna trial for `SearchSpace.suggest`: uniform choices from a seeded RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.params[name] = value = self.rng.randint(low, high)
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = value = choices[self.rng.randrange(len(choices))]
        return value


def sample_configs(space: SearchSpace, n: int, seed: int, image_size: int, *,
                   exclude: Iterable[str] = (), max_tries: int | None = None) -> list[NetworkConfig]:
    """`n` distinct configs drawn uniformly (per field) from `space`; configs whose JSON is in `exclude`
    are skipped, so an evaluation set never repeats a fitting set."""
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[NetworkConfig] = []
    tries = 0
    limit = max_tries if max_tries is not None else 100 * n + 100
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(f"could only draw {len(out)} distinct configs of {n} from the space "
                             f"(after {limit} draws); the space is too small")
        config = space.suggest(RandomTrial(rng), image_size)
        key = config.to_json(sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(config)
    return out


def config_id(config: NetworkConfig) -> str:
    """The key `sample_configs(exclude=...)` compares."""
    return config.to_json(sort_keys=True)


__all__ = ["RandomTrial", "config_id", "sample_configs"]
