"""Container-Light scaled by width and depth multipliers: where the search starts, and the baseline it must beat.

What a practitioner does without a search: take the published network and shrink it uniformly until it fits. Each
member keeps Container-Light's block kinds, kernel sizes, MLP ratios and patch sizes; every stage's dim is the base
dim times the width multiplier, rounded to a multiple of the stage's head_dim (at least one head), and every stage's
depth the base depth times the depth multiplier, rounded, at least 1. Members are reported as they are, whether or
not the search's space contains them. At a budget the arm's choice is the best member, by the study's objective,
whose latency (the search's deciding figure) fits.

The search starts from the same family (`starting_params`): its members nearest in the space that fit the budget are
the study's first trials, so that TPE begins where a practitioner would end; the best of them is always among the
finalists (search.finalists).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from container import NetworkConfig, container_light_config

from search.latency import Latency, LatencySource
from search.space import SearchInputError, SearchSpace

WIDTHS = (0.25, 0.5, 0.75, 1.0)
DEPTHS = (0.5, 0.75, 1.0)
STARTING_MEMBERS = 5  # at most this many fitting members start a study (of TPE's 10 start-up trials)


@dataclass(frozen=True)
class ScaledMember:
    """One member of the family: the multipliers and the config they give."""

    width: float
    depth: float
    config: NetworkConfig

    @property
    def name(self) -> str:
        return f"width x{self.width:g}, depth x{self.depth:g}"


def base_network(space: SearchSpace, image_size: int) -> NetworkConfig:
    """Container-Light at the search's image size, classes and input channels: the family's base. Raises ValueError
    for an image size Container-Light cannot take."""
    return container_light_config(image_size=image_size, num_classes=space.num_classes, in_chans=space.in_chans)


def _check(name: str, values: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise SearchInputError(f"--{name}: need one or more multipliers > 0 (got {' '.join(map(str, values))})")
    return values


def scale_config(base: NetworkConfig, width: float, depth: float) -> NetworkConfig:
    """`base` with every stage's dim scaled by `width` (a multiple of the stage's head_dim, >= one head) and its
    depth by `depth` (rounded, >= 1); everything else as in `base`."""
    stages = []
    for stage in base.stages:
        head_dim = stage.head_dim
        heads = max(1, round(stage.dim * width / head_dim))
        stages.append(replace(stage, dim=heads * head_dim, heads=heads, depth=max(1, round(stage.depth * depth))))
    return base.replace(stages=tuple(stages))


def scaled_family(base: NetworkConfig, widths: Sequence[float] = WIDTHS,
                  depths: Sequence[float] = DEPTHS) -> list[ScaledMember]:
    """Every (width, depth) multiplier pair applied to `base`, widths outer; duplicates after rounding kept once
    (the first pair that gives the config)."""
    members, seen = [], set()
    for w in _check("widths", widths):
        for d in _check("depths", depths):
            config = scale_config(base, w, d)
            key = config.to_json(sort_keys=True)
            if key not in seen:
                seen.add(key)
                members.append(ScaledMember(w, d, config))
    return members


def best_member(members: Sequence[ScaledMember], latencies: Sequence[Latency], budget_ms: float,
                score: Callable[[NetworkConfig], float]) -> tuple[ScaledMember, Latency] | None:
    """The member with the highest score among those whose deciding latency fits `budget_ms` (ties: the faster);
    None when none fits."""
    fitting = [(m, lat) for m, lat in zip(members, latencies) if lat.deciding_ms <= budget_ms]
    if not fitting:
        return None
    return max(fitting, key=lambda ml: (score(ml[0].config), -ml[1].deciding_ms))


def measure_family(members: Sequence[ScaledMember], source: LatencySource) -> list[Latency]:
    """Each member's latency from `source` (the search's latency stack: a CachedLatency in front of BenchLatency)."""
    return [source.measure(m.config) for m in members]


def starting_params(space: SearchSpace, base: NetworkConfig, budget_ms: float, source: LatencySource, *,
                    widths: Sequence[float] = WIDTHS, depths: Sequence[float] = DEPTHS,
                    limit: int = STARTING_MEMBERS) -> list[dict]:
    """The Optuna params of the family's members projected into `space` (SearchSpace.nearest_params) whose latency
    from `source` fits `budget_ms`, the slowest (largest) first, at most `limit` of them."""
    seen: dict[str, dict] = {}
    for member in scaled_family(base, widths, depths):
        params = space.nearest_params(member.config)
        if params is not None:
            seen.setdefault(repr(sorted(params.items())), params)
    measured = [(source.measure(space.config_from_params(p, base.image_size)).deciding_ms, p) for p in seen.values()]
    fitting = sorted(((ms, p) for ms, p in measured if ms <= budget_ms), key=lambda mp: -mp[0])
    return [p for _, p in fitting[:limit]]


__all__ = ["DEPTHS", "STARTING_MEMBERS", "ScaledMember", "WIDTHS", "base_network", "best_member", "measure_family",
           "scale_config", "scaled_family", "starting_params"]
