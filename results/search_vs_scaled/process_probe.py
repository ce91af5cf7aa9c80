"""Probe: does a process that has trained networks (as compare's process has, by its end) time them slower?

Times 12 of the seeds 10-14 winners once each (normalised, as the search does), then with `train` trains three of
them on Fashion-MNIST at the finalists' fidelity in the same process and times them all again; prints JSON
{"A": before, "C": after}. Alternate processes that train with fresh ones, nothing else running:

    for mode in train fresh train fresh; do .venv/bin/python results/search_vs_scaled/process_probe.py $mode; done
"""
import json
import random
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from container import NetworkConfig
from search.latency import BenchLatency, Deployment, default_stop
from search.scoring.accuracy import AccuracyScorer
from search.settings import FINALIST_TRAINING, Finalists

WINNERS = Path(__file__).parent / "fair-gate-seeds10-14" / "winners.csv"


def main(mode: str) -> None:
    configs = list(pd.read_csv(WINNERS).drop_duplicates("config").config)[::2][:12]
    source = BenchLatency(Deployment(threads=2), default_stop(30))

    def timed(seed: int) -> list[float]:
        figures = {c: source.measure(NetworkConfig.from_json(c)).deciding_ms
                   for c in random.Random(seed).sample(configs, len(configs))}
        return [figures[c] for c in configs]

    result = {"A": timed(1)}
    if mode == "train":
        data = Finalists().dataset()
        for config in configs[:3]:
            AccuracyScorer(data, FINALIST_TRAINING, seed=0).train(NetworkConfig.from_json(config))
        result["C"] = timed(2)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
