"""Analysis of probes/drift.py's recording: each row's figure over a window of rounds, against the same a lag later.

Rounds are taken as evenly spaced over the recording. First, for W blocks taken one every k rounds (so spread over
W x k rounds), the share of (row, window) pairs whose normalised medians (bench's: each block divided by its round's
calibration) agree within 5%, and the median and 90th percentile of |later / earlier - 1|. Then other estimators on
10 blocks back to back: as measured, the minimum, and the ratio to an anchor network in the same round.

    python results/reproducibility/probes/drift_windows.py drift.json [LAG_S]
"""
import json
import sys

import numpy as np

ANCHOR = "container_light b1 fast"


def agreement(figure, rounds: int, lag: int, span: int) -> np.ndarray:
    """|figure(later window) / figure(window) - 1| for every row and window start."""
    starts = range(0, rounds - lag - span, max(span, 10))
    return np.abs(np.array([figure(s + lag, span) / figure(s, span) - 1 for s in starts]))


def main(path: str, lag_s: float = 250.0) -> None:
    data = json.load(open(path))
    rows = data["rows"]
    rounds = min(len(t) for t in data["normalised_ms"])
    measured = np.array([t[:rounds] for t in data["measured_ms"]]).T  # rounds x rows
    normalised = np.array([t[:rounds] for t in data["normalised_ms"]]).T
    lag = round(lag_s / data["seconds"] * rounds)
    print(f"{rounds} rounds over {data['seconds']:.0f} s, {len(rows)} rows; windows {lag_s:.0f} s ({lag} rounds) apart")

    def show(name: str, d: np.ndarray) -> None:
        print(f"{name}: within 5% {np.mean(d < .05):6.1%}, median {np.median(d):.2%}, "
              f"90th percentile {np.quantile(d, .9):.2%} ({len(d)} windows)")

    for blocks in (5, 10, 20):
        for every in (1, 2, 4, 8):
            seconds = blocks * every * data["seconds"] / rounds
            show(f"{blocks:3d} blocks, one every {every} rounds ({seconds:5.1f} s)",
                 agreement(lambda s, n, k=every: np.median(normalised[s:s + n:k], 0), rounds, lag, blocks * every))
    anchor = rows.index(ANCHOR)
    others = [i for i in range(len(rows)) if i != anchor]
    estimators = {
        "median, normalised (bench's)": lambda s, n: np.median(normalised[s:s + n], 0),
        "median, as measured": lambda s, n: np.median(measured[s:s + n], 0),
        "minimum, as measured": lambda s, n: measured[s:s + n].min(0),
        "minimum, normalised": lambda s, n: normalised[s:s + n].min(0),
        f"median of the ratio to {ANCHOR} in each round":
            lambda s, n: np.median(measured[s:s + n, others] / measured[s:s + n, anchor:anchor + 1], 0)}
    print("10 blocks back to back:")
    for name, figure in estimators.items():
        show(f"  {name}", agreement(figure, rounds, lag, 10))


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:]))
