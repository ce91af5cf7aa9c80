"""The predictor gate against no gate, from pairs of `python -m search compare` runs made in one session.

Each pair is a run with the gate and one without it, on the same seeds. Per budget and seed it prints the search
arm's winner's test accuracy in each run (winners.csv) and, where the run directory still holds its studies, the
largest fitting network kept (the most parameters among the feasible trials that the re-check did not drop: what the
finalists are drawn from) and how many proposals the gate turned away. Then, per budget, it pools the seeds of
every pair: the mean of gate - no gate with a percentile bootstrap interval (search.experiments.evidence's
bootstrap_mean, as the compare reports use).

Run from the repository root, a gate directory then its no-gate directory, for each pair:
  .venv/bin/python results/search_vs_scaled/gate_pairs.py results/compare-ab-gate results/compare-ab-nogate \
      results/compare-fair-s5-9-gate results/compare-fair-s5-9-nogate
(the compare directories are the runs' own, git-ignored; winners.csv of each is also in ab-12ms-*/ and
fair-*-seeds5-9/ here, without the studies.) No timing: it reads files only.
"""
import re
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from search.experiments.evidence import bootstrap_mean


def search_winners(run: Path) -> pd.Series:
    """The search arm's winners' test accuracy by (budget, seed)."""
    w = pd.read_csv(run / "winners.csv")
    return w[w.arm == "search"].set_index(["budget_ms", "seed"]).accuracy


def studies(run: Path) -> dict[tuple[float, int], tuple[float, int]]:
    """(budget, seed) -> (largest fitting network kept, M parameters; proposals the gate rejected), from studies/."""
    out = {}
    for path in run.glob("studies/*-params-seed*/trials.csv"):
        m = re.search(r"-(\d+(?:\.\d+)?)ms-params-seed(\d+)$", path.parent.name)
        t = pd.read_csv(path)
        kept = t[(t.feasible == True) & ~t.dropped.fillna(False).astype(bool)]  # noqa: E712 (a column)
        out[(float(m[1]), int(m[2]))] = (kept.params.max() / 1e6, int((t.latency_source == "predicted").sum()))
    return out


def main(dirs: list[str]) -> None:
    if not dirs or len(dirs) % 2:
        sys.exit("usage: gate_pairs.py GATE_DIR NOGATE_DIR [GATE_DIR NOGATE_DIR ...]")
    rows = []
    for gate, nogate in zip(map(Path, dirs[::2]), map(Path, dirs[1::2])):
        with_gate, without = search_winners(gate), search_winners(nogate)
        fitted_gate, fitted_nogate = studies(gate), studies(nogate)
        for key in with_gate.index.intersection(without.index):
            largest_gate, rejected = fitted_gate.get(key, (float("nan"), -1))
            rows.append({"pair": gate.name, "budget_ms": key[0], "seed": key[1], "no_gate": without[key],
                         "gate": with_gate[key], "diff_points": 100 * (with_gate[key] - without[key]),
                         "largest_M_no_gate": fitted_nogate.get(key, (float("nan"),))[0],
                         "largest_M_gate": largest_gate, "rejected": rejected})
    table = pd.DataFrame(rows).sort_values(["budget_ms", "pair", "seed"])
    print(table.round(3).to_string(index=False))
    for budget, per in table.groupby("budget_ms"):
        b = bootstrap_mean(per.diff_points)
        larger = int((per.largest_M_gate > per.largest_M_no_gate).sum())
        print(f"{budget:g} ms, {b['n']} seeds: gate - no gate {b['mean']:+.2f} [{b['lo']:+.2f}, {b['hi']:+.2f}] "
              f"points; "
              f"largest fitting network kept {per.largest_M_no_gate.mean():.2f} -> {per.largest_M_gate.mean():.2f} M, "
              f"larger with the gate on {larger} of {len(per)}")


if __name__ == "__main__":
    main(sys.argv[1:])
