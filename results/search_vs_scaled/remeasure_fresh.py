"""A compare run's winners re-measured in a fresh process, by compare's own re-measure (search.experiments.compare's
`remeasure`: each budget's distinct winners in 3 rounds, a seeded shuffle per round, the median of the search's
deciding figure, normalised to the machine's reference speed).

Prints, per distinct winner, the figure the search decided on (`search_latency_ms`), compare's own re-measure at
the end of its run (`latency_ms`) and this process's (`fresh_ms`), their ratios, and how many read over budget here.
Run from the repository root, nothing else running (it times, about 2 minutes for 27 networks):
  .venv/bin/python results/search_vs_scaled/remeasure_fresh.py results/search_vs_scaled/fair-gate-seeds10-14
"""
import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from search.experiments.compare import ArmsSettings, remeasure
from search.latency import BenchLatency, Deployment, default_stop

RATIOS = {"compare_remeasure/search": ("latency_ms", "search_latency_ms"),
          "fresh/search": ("fresh_ms", "search_latency_ms"), "fresh/compare_remeasure": ("fresh_ms", "latency_ms")}


def main(run: str) -> None:
    report = json.loads((Path(run) / "report.json").read_text())
    winners = pd.read_csv(Path(run) / "winners.csv")
    deployment = Deployment.from_dict(report["deployment"])
    with tempfile.TemporaryDirectory() as out:
        settings = ArmsSettings(budgets=tuple(report["budgets"]), remeasure_rounds=report["remeasure_rounds"],
                                deployment=deployment, out_dir=Path(out), progress=False)
        rows = [{"budget_ms": b, "config": c} for b, c in zip(winners.budget_ms, winners.config)]
        source = BenchLatency(deployment, default_stop(max(settings.budgets)))
        remeasure(settings, rows, source, {"fingerprint": deployment.fingerprint(),
                                           "deployment": deployment.to_dict()})
    winners["fresh_ms"] = [r["latency_ms"] for r in rows]
    table = winners.drop_duplicates(["budget_ms", "config"]).copy()
    for name, (top, bottom) in RATIOS.items():
        table[name] = table[top] / table[bottom]
    columns = ["budget_ms", "arm", "seed", "winner", "search_latency_ms", "latency_ms", "fresh_ms", *RATIOS]
    print(table[columns].round(3).to_string(index=False))
    print("medians:", table[list(RATIOS)].median().round(3).to_dict())
    print(f"over budget here: {int((table.fresh_ms > table.budget_ms).sum())} of {len(table)}; in compare's "
          f"re-measure: {int((table.latency_ms > table.budget_ms).sum())}")


if __name__ == "__main__":
    main(sys.argv[1])
