"""The gate's decision, as pure functions: tests/test_regress.py checks them on synthetic samples.

Time: a row regresses when the Hodges-Lehmann estimate of the slowdown of its normalised time is at
least `min_effect` AND a one-sided Mann-Whitney U test says new > reference at `alpha`.
Deterministic figures (parameters, fvcore MACs, CPU allocator peak bytes) are compared exactly:
every change is reported, an increase fails.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats

from bench.formatting import si
from bench.regress.worker import DETERMINISTIC
from bench.targets import BenchInputError

DEFAULT_MIN_EFFECT = 0.10
DEFAULT_ALPHA = 0.01
FIGURE_LABELS = {"params": "params", "macs_fvcore": "MACs", "cpu_alloc_peak_bytes": "alloc peak"}


@dataclass(frozen=True)
class TimeVerdict:
    change: float  # Hodges-Lehmann estimate of new / reference - 1 (+0.15: 15% slower)
    p_slower: float  # one-sided Mann-Whitney U: new > reference
    p_faster: float  # one-sided Mann-Whitney U: new < reference
    regressed: bool
    faster: bool  # significantly faster by at least the effect size: time to update the baseline
    n_reference: int
    n_new: int


def checked_sample(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray([float(v) for v in values], dtype=float)
    if a.ndim != 1 or len(a) < 3 or not np.all(np.isfinite(a)) or not np.all(a > 0):
        raise BenchInputError(f"{what}: need at least 3 finite positive times, got {list(values)!r}")
    return a


def decide(reference: Sequence[float], new: Sequence[float], min_effect: float = DEFAULT_MIN_EFFECT,
           alpha: float = DEFAULT_ALPHA) -> TimeVerdict:
    """Did `new` (normalised times, one per round) get slower than `reference`?

    Regressed only if the estimated slowdown is at least `min_effect` AND it is significant:
    the one-sided Mann-Whitney U test rejects "not slower" at level `alpha`. The estimate is the
    Hodges-Lehmann shift of log times (the median of all pairwise log ratios), as a ratio.
    """
    ref, cur = checked_sample(reference, "reference sample"), checked_sample(new, "new sample")
    change = float(np.exp(np.median(np.subtract.outer(np.log(cur), np.log(ref))))) - 1.0
    p_slower = float(stats.mannwhitneyu(cur, ref, alternative="greater").pvalue)
    p_faster = float(stats.mannwhitneyu(cur, ref, alternative="less").pvalue)
    return TimeVerdict(change=change, p_slower=p_slower, p_faster=p_faster,
                       regressed=change >= min_effect and p_slower < alpha,
                       faster=change <= -min_effect / (1 + min_effect) and p_faster < alpha,
                       n_reference=len(ref), n_new=len(cur))


def check_power(n_new: int, n_reference: int, alpha: float) -> None:
    """With n and m rounds the smallest one-sided Mann-Whitney p is 1 / C(n + m, n): it must be < alpha."""
    if 1 / math.comb(n_new + n_reference, n_new) >= alpha:
        raise BenchInputError(f"--rounds {n_new}: with {n_reference} reference rounds no outcome is significant at "
                              f"--alpha {alpha:g}; use more rounds")


@dataclass(frozen=True)
class FigureChange:
    row: str
    figure: str
    reference: int | None
    new: int | None

    @property
    def increase(self) -> bool:
        return self.reference is not None and self.new is not None and self.new > self.reference

    @property
    def relative(self) -> float:
        if not self.reference or self.new is None:
            return math.nan
        return self.new / self.reference - 1.0

    def text(self) -> str:
        rel = f" ({self.relative:+.1%})" if math.isfinite(self.relative) else ""
        return f"{FIGURE_LABELS.get(self.figure, self.figure)} {si(self.reference, 4)} -> {si(self.new, 4)}{rel}"


def compare_deterministic(reference: dict[str, dict[str, Any]], new: dict[str, dict[str, Any]]) -> list[FigureChange]:
    """Exact comparison of the deterministic figures of every row the two sides share."""
    changes = []
    for row in new:
        if row not in reference:
            continue
        for figure in DETERMINISTIC:
            a, b = reference[row].get(figure), new[row].get(figure)
            if a != b:
                changes.append(FigureChange(row, figure, a, b))
    return changes
