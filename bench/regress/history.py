"""`python -m bench history`: the regression gate's normalised throughput of each row over commits.

Every gate run (`python -m bench regress`, with or without --against, and --update) appends one
JSON line per row and revision to results/runs/regress_history.jsonl. This plots, for each row,
normalised throughput (calibration time / row time, so machine speed cancels) relative to the
row's first commit in the history: one point per run, a line through the median of each commit,
commits in the order they first appear. Runs the gate flagged are marked with a red cross.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.kit import Parser, results_root, save_figure, writable_file
from bench.regress import HISTORY_PATH, METHOD
from bench.targets import BenchInputError

DEFAULT_OUT = results_root() / "runs" / "regress_history.png"


def read_history(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        raise BenchInputError(f"history {path}: missing; every `python -m bench regress` run appends to it")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            float(record["normalised_throughput"]), str(record["row"]), str(record["git_commit"])
        except (ValueError, KeyError, TypeError) as e:
            raise BenchInputError(f"history {path}:{number}: not a gate record ({e})") from None
        records.append(record)
    if not records:
        raise BenchInputError(f"history {path}: empty; every `python -m bench regress` run appends to it")
    return records


def select(records: list[dict[str, Any]], machine: str | None, suite: str | None = None) -> list[dict[str, Any]]:
    """The records of one suite (records from before suite files are the default suite's) and one machine
    fingerprint (default: the most recent record's) made by the gate's current measuring method (figures
    made another way are not comparable)."""
    if suite is not None:
        known_suites = sorted({str(r.get("suite", "default")) for r in records})
        records = [r for r in records if r.get("suite", "default") == suite]
        if not records:
            raise BenchInputError(f"--suite {suite}: no records; suites in the history: {', '.join(known_suites)}")
    if machine == "all":
        return records
    records = [r for r in records if r.get("method") == METHOD]
    if not records:
        raise BenchInputError(f"history: no records made with the current measuring method {METHOD!r}")
    machine = machine or records[-1].get("fingerprint")
    chosen = [r for r in records if r.get("fingerprint") == machine]
    if not chosen:
        known = sorted({str(r.get("fingerprint")) for r in records})
        raise BenchInputError(f"--machine {machine}: no records; machines in the history: {', '.join(known)}")
    return chosen


def plot(records: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    commits: list[str] = []
    for r in sorted(records, key=lambda r: r.get("timestamp_utc", "")):
        if r["git_commit"] not in commits:
            commits.append(r["git_commit"])
    x_of = {c: i for i, c in enumerate(commits)}
    rows = list(dict.fromkeys(r["row"] for r in records))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + 0.6 * len(commits)), 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, row in enumerate(rows):
        mine = [r for r in records if r["row"] == row]
        by_commit: dict[str, list[float]] = {}
        for r in mine:
            by_commit.setdefault(r["git_commit"], []).append(float(r["normalised_throughput"]))
        first = commits[min(x_of[c] for c in by_commit)]
        scale = float(np.median(by_commit[first]))
        color = colors[k % len(colors)]
        jitter = (k - (len(rows) - 1) / 2) * 0.02
        xs = [x_of[r["git_commit"]] + jitter for r in mine]
        ys = [float(r["normalised_throughput"]) / scale for r in mine]
        ax.scatter(xs, ys, s=12, color=color, alpha=0.5)
        flagged = [(x, y) for x, y, r in zip(xs, ys, mine) if r.get("regressed")]
        if flagged:
            ax.scatter(*zip(*flagged), marker="x", s=50, color="red", zorder=3)
        line = sorted((x_of[c], float(np.median(v)) / scale) for c, v in by_commit.items())
        ax.plot([p[0] for p in line], [p[1] for p in line], "-o", ms=3, color=color, label=row)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(commits)), commits, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("normalised throughput\n(relative to the row's first commit)")
    ax.set_title(f"regression gate history, machine {records[-1].get('fingerprint')} (red x: flagged)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)
    return Path(out)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.add_argument("--history", default=str(HISTORY_PATH), help="history file written by the gate")
    parser.add_argument("--out", type=writable_file, default=DEFAULT_OUT, help="PNG to write")
    parser.add_argument("--machine", default=None,
                        help="machine fingerprint to plot (default: the latest record's; 'all' for every machine)")
    parser.add_argument("--suite", default=None, help="the gate suite's name to plot (default: every suite's rows)")


def main(args: argparse.Namespace) -> int:
    try:
        records = select(read_history(Path(args.history)), args.machine, args.suite)
        out = plot(records, Path(args.out))
    except BenchInputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    commits = len({r["git_commit"] for r in records})
    print(f"wrote {out} ({len(records)} records, {commits} commits)")
    return 0


if __name__ == "__main__":
    _parser = Parser(prog="python -m bench.regress.history")
    configure_parser(_parser)
    raise SystemExit(main(_parser.parse_args()))
