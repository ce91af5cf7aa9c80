"""A compare run's winners re-measured in a fresh process, the way compare re-measures them (3 rounds, a seeded
shuffle per round, the median of the search's deciding figure: normalised to the machine's reference speed).

Prints, per distinct winner, the figure the search decided on (`search_latency_ms`), compare's own re-measure at
the end of its run (`latency_ms`) and this process's (`fresh_ms`), their ratios, and how many read over budget here.
Run from the repository root, nothing else running (it times, about 2 minutes for 27 networks):
  .venv/bin/python results/search_vs_scaled/remeasure_fresh.py results/search_vs_scaled/fair-gate-seeds10-14
"""
import random
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from container import NetworkConfig
from search.latency import BenchLatency, Deployment, default_stop

RATIOS = {"compare_remeasure/search": ("latency_ms", "search_latency_ms"),
          "fresh/search": ("fresh_ms", "search_latency_ms"), "fresh/compare_remeasure": ("fresh_ms", "latency_ms")}


def main(run: str, rounds: int = 3) -> None:
    winners = pd.read_csv(Path(run) / "winners.csv")
    source = BenchLatency(Deployment(threads=2), default_stop(float(winners.budget_ms.max())))
    configs = sorted(set(winners.config))
    measured: dict[str, list[float]] = {c: [] for c in configs}
    order = random.Random(0)
    for _ in range(rounds):
        for config in order.sample(configs, len(configs)):
            measured[config].append(source.measure(NetworkConfig.from_json(config)).deciding_ms)
    table = winners.drop_duplicates("config").copy()
    table["fresh_ms"] = [float(np.median(measured[c])) for c in table.config]
    for name, (top, bottom) in RATIOS.items():
        table[name] = table[top] / table[bottom]
    columns = ["budget_ms", "arm", "seed", "winner", "search_latency_ms", "latency_ms", "fresh_ms", *RATIOS]
    print(table[columns].round(3).to_string(index=False))
    print("medians:", table[list(RATIOS)].median().round(3).to_dict())
    print(f"over budget here: {int((table.fresh_ms > table.budget_ms).sum())} of {len(table)}; in compare's "
          f"re-measure: {int((table.latency_ms > table.budget_ms).sum())}")


if __name__ == "__main__":
    main(sys.argv[1])
