"""What the runtimes pairs of `python -m bench repeat` disagree by: one shift for all rows, a row's offset, drift.

For each pair directory (run-1/ and run-2/ with their latency_samples.json, every block of every row), from each
row's normalised blocks (`rounds_norm_ms`): the share of rows whose medians agree within 5% (max / min - 1, as
bench repeat counts), the median of run 2 / run 1 over the rows (a shift common to all of them), the share within
5% once that shift is divided out (in hindsight), the share whose two halves of the same run agree within 5%, and
the rows furthest apart. With two pair directories, each run's rows pooled with one of the other pair's (geometric
mean of the two medians) against the other two runs, both ways.

    python results/reproducibility/probes/repeat_pairs.py results/reproducibility/runtimes-same-rounds \
        results/reproducibility/runtimes-again-2
"""
import json
import sys
from pathlib import Path

import numpy as np


def runs(pair: Path) -> list[dict[tuple, list[float]]]:
    return [{(x["name"], x["batch_size"], x["runtime"]): x["rounds_norm_ms"]
             for x in json.loads((pair / run / "latency_samples.json").read_text())} for run in ("run-1", "run-2")]


def within(ratios: np.ndarray) -> float:
    return float(np.mean(np.maximum(ratios, 1 / ratios) - 1 <= 0.05))


def main(pairs: list[str]) -> None:
    all_runs = []
    for pair in map(Path, pairs):
        first, second = runs(pair)
        rows = list(first)
        ratio = np.array([np.median(second[k]) / np.median(first[k]) for k in rows])
        shift = float(np.median(ratio))
        halves = [within(np.array([np.median(r[k][len(r[k]) // 2:]) / np.median(r[k][:len(r[k]) // 2]) for k in rows]))
                  for r in (first, second)]
        print(f"{pair.name}: {within(ratio):.0%} of {len(rows)} rows within 5%; run 2 / run 1 median {shift:.3f}; "
              f"{within(ratio / shift):.0%} within 5% with that divided out; halves of run 1 and run 2 within 5%: "
              f"{halves[0]:.0%}, {halves[1]:.0%}")
        for i in np.argsort(-np.abs(np.log(ratio)))[:3]:
            k = rows[i]
            print(f"  {' '.join(map(str, k))}: {np.median(first[k]):.2f} -> {np.median(second[k]):.2f} ms "
                  f"({ratio[i] - 1:+.1%})")
        all_runs.append((first, second))
    if len(all_runs) == 2:
        (a1, a2), (b1, b2) = all_runs
        rows = list(a1)

        def pooled(x, y):
            return np.array([np.sqrt(np.median(x[k]) * np.median(y[k])) for k in rows])
        for name, one, other in (("run 1s against run 2s", pooled(a1, b1), pooled(a2, b2)),
                                 ("crossed", pooled(a1, b2), pooled(a2, b1))):
            print(f"two runs pooled per row, {name}: {within(other / one):.0%} within 5%")


if __name__ == "__main__":
    main(sys.argv[1:])
