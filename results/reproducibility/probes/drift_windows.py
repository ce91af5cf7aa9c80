"""Analysis of probes/drift.py's recording: each row's normalised median over W blocks, against the same a lag later.

The blocks are normalised as bench.timing does (a round's calibration: the median over it and two rounds either
side). For W blocks taken one every k rounds (so spread over W x k rounds), prints the share of (row, window) pairs
whose two figures agree within 5% and the median and 90th percentile of |later / earlier - 1|.

    python results/reproducibility/probes/drift_windows.py drift.json [LAG_S]
"""
import json
import sys

import numpy as np


def main(path: str, lag_s: float = 250.0) -> None:
    data = json.load(open(path))
    rounds, reference = data["rounds"], data["reference_ms"]
    t = np.array([r[0] for r in rounds])
    calibration = np.sqrt(np.array([r[1] for r in rounds]) * np.array([r[2] for r in rounds]))
    around = np.array([np.median(calibration[max(0, i - 2):i + 3]) for i in range(len(calibration))])
    normalised = np.array([r[3] for r in rounds]) * reference / around[:, None]
    lag = int(np.searchsorted(t, lag_s))
    print(f"{len(rounds)} rounds over {t[-1]:.0f} s, {len(data['rows'])} rows; windows {lag_s:.0f} s apart")
    for blocks in (5, 10, 20):
        for every in (1, 2, 4, 8):
            span = blocks * every
            starts = range(0, len(rounds) - lag - span, max(span, 10))
            d = np.abs(np.array([np.median(normalised[s + lag:s + lag + span:every], 0)
                                 / np.median(normalised[s:s + span:every], 0) - 1 for s in starts]))
            print(f"{blocks:3d} blocks, one every {every} rounds ({span * t[-1] / len(rounds):5.1f} s): "
                  f"within 5% {np.mean(d < .05):6.1%}, median {np.median(d):.2%}, 90th percentile "
                  f"{np.quantile(d, .9):.2%} ({len(starts)} windows)")


if __name__ == "__main__":
    main(sys.argv[1], *(float(a) for a in sys.argv[2:]))
