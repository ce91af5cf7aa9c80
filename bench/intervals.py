"""Intervals of the figures a run divides: a paired bootstrap over the rounds that measured both variants.

bench.timing.measure_rounds times the variants of one workload in the same rounds, so round i of one
variant and round i of another were measured under the same conditions: resampling rounds (paired)
keeps that. The statistic is the ratio of the medians of the normalised per-round times. The resampling
is seeded: the same samples give the same interval.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 2000


def _ratio_of_medians(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(a, axis=axis) / np.median(b, axis=axis)


def ratio_interval(numerator: Sequence[float], denominator: Sequence[float]) -> tuple[float, float]:
    """CONFIDENCE bootstrap interval (percentile) of median(numerator) / median(denominator), paired by round.

    (nan, nan) when either has fewer than 3 rounds or they have different lengths (not paired)."""
    a = np.asarray(numerator if numerator is not None else [], dtype=float)
    b = np.asarray(denominator if denominator is not None else [], dtype=float)
    if len(a) != len(b) or len(a) < 3:
        return math.nan, math.nan
    if np.allclose(a, b):
        return 1.0, 1.0  # a variant against itself
    result = stats.bootstrap((a, b), _ratio_of_medians, paired=True, vectorized=True, n_resamples=RESAMPLES,
                             confidence_level=CONFIDENCE, method="percentile", random_state=0)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def interval_text(low: float, high: float, digits: int = 3) -> str:
    """"0.97-1.04", or "-" when there is no interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "-"
    return f"{low:.{digits}g}-{high:.{digits}g}"


__all__ = ["CONFIDENCE", "interval_text", "ratio_interval"]
