"""How fast the machine ran during a `python -m search compare` run: the machine speed (the calibration workload's
reference time over its time then; below 1 slower than the reference) of every latency its studies measured, from
the run's shared latency cache. Prints the median and the 5th-95th percentile.

Run from the repository root on the compare directories (git-ignored, so only where the run was made):
  .venv/bin/python results/search_vs_scaled/run_speed.py results/compare-fair-s10-14 results/compare-fair-s15-19
No timing: it reads files only.
"""
import json
import sys
from pathlib import Path

import numpy as np


def main(dirs: list[str]) -> None:
    for run in map(Path, dirs):
        entries = json.loads((run / "latency_cache.json").read_text())["entries"].values()
        speeds = np.array([s for e in entries if (s := e["latency"].get("machine_speed")) is not None and s == s])
        low, high = np.quantile(speeds, [0.05, 0.95])
        print(f"{run.name}: {len(speeds)} measurements, machine speed median {np.median(speeds):.2f}, "
              f"5th-95th percentile {low:.2f}-{high:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
