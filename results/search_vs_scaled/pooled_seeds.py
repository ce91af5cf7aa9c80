"""The paired differences of several `python -m search compare` runs on disjoint seeds, pooled per budget.

Each run pairs its arms' winners by (budget, seed): search - scaled and search - random, in points of test accuracy
(winners.csv). The runs must have been made with the same settings (report.json: trials, objective, deployment,
training, training seeds, re-measure rounds, the finalists' seeds and margin); the script refuses to pool otherwise.
Per budget it prints each run's mean difference and the pooled mean over all seeds with a percentile bootstrap
interval (search.experiments.evidence's bootstrap_mean, as the compare reports use), and whether every winner fit its
budget when re-measured.

Run from the repository root:
  .venv/bin/python results/search_vs_scaled/pooled_seeds.py results/compare-fair-s5-9-gate results/compare-fair-s10-14
(the compare directories are git-ignored; their report.md, report.json and winners.csv are copied here as
fair-gate-seeds5-9/ and fair-gate-seeds10-14/, which the script reads as well.) No timing: it reads files only.
"""
import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from search.experiments.evidence import bootstrap_mean

SAME = ("trials", "objective", "deployment", "training", "train_seeds", "remeasure_rounds", "finalist_seeds",
        "finalist_margin")


def differences(run: Path) -> pd.DataFrame:
    """One row per (budget, seed): the search arm's winner's accuracy minus the scaled and the random arm's, points."""
    w = pd.read_csv(run / "winners.csv")
    acc = w.pivot_table(index=["budget_ms", "seed"], columns="arm", values="accuracy")
    out = pd.DataFrame({"search - scaled": 100 * (acc["search"] - acc["scaled"]),
                        "search - random": 100 * (acc["search"] - acc["random"])}).reset_index()
    out["run"], out["all_fit"] = run.name, w.groupby(["budget_ms", "seed"]).fits.all().to_numpy()
    return out


def main(dirs: list[str]) -> None:
    runs = [Path(d) for d in dirs]
    if not runs:
        sys.exit("usage: pooled_seeds.py RUN_DIR [RUN_DIR ...]")
    reports = [json.loads((run / "report.json").read_text()) for run in runs]
    for key in SAME:
        if any(r.get(key) != reports[0].get(key) for r in reports[1:]):
            sys.exit(f"{key} differs between the runs: {[r.get(key) for r in reports]}; not pooled")
    table = pd.concat([differences(run) for run in runs])
    if table.duplicated(["budget_ms", "seed"]).any():
        sys.exit("the runs share seeds; pool disjoint seeds only")
    print(table.round(2).to_string(index=False))
    for budget, per in table.groupby("budget_ms"):
        print(f"\n{budget:g} ms, {len(per)} seeds; every winner fits when re-measured: {bool(per.all_fit.all())}")
        for name in ("search - scaled", "search - random"):
            each = ", ".join(f"{run} {g[name].mean():+.2f}" for run, g in per.groupby("run", sort=False))
            b = bootstrap_mean(per[name])
            print(f"  {name}: pooled {b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] points ({each})")


if __name__ == "__main__":
    main(sys.argv[1:])
