"""The hand-designed baseline of `python -m search compare`: Container-Light scaled by width and depth multipliers.

What a practitioner does without a search: take the published network and shrink it uniformly until it fits. Each
member keeps Container-Light's block kinds, kernel sizes, MLP ratios and patch sizes; every stage's dim is the base
dim times the width multiplier, rounded to a multiple of the stage's head_dim (at least one head), and every stage's
depth the base depth times the depth multiplier, rounded, at least 1. Members are reported as they are, whether or
not the search's space contains them. At a budget the arm's choice is the best member, by the study's objective,
whose latency (the search's deciding figure) fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from container import NetworkConfig

from search.latency import Latency, LatencySource
from search.space import SearchInputError

WIDTHS = (0.25, 0.5, 0.75, 1.0)
DEPTHS = (0.5, 0.75, 1.0)


@dataclass(frozen=True)
class ScaledMember:
    """One member of the family: the multipliers and the config they give."""

    width: float
    depth: float
    config: NetworkConfig

    @property
    def name(self) -> str:
        return f"width x{self.width:g}, depth x{self.depth:g}"


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


__all__ = ["DEPTHS", "ScaledMember", "WIDTHS", "best_member", "measure_family", "scale_config", "scaled_family"]
