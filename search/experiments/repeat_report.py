"""The report of `python -m search repeat` (search.experiments.repeat): tables, repeat.md / repeat.json, the terminal
summary, and the command line."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from rich.console import Console

import bench
from bench.kit import (Parser, fail, non_negative_float, print_frame, program_name, results_root, table_console,
                       writable_dir, write_json, write_text)
from bench.env import environment, machine_summary
from bench.formatting import fixed, markdown_table, number, si

from search.arguments import add_search_arguments, settings_from_args, space_from_args
from search.latency import LatencySource
from search.scoring.proxies import Scorer
from search.settings import SearchSettings, StudyStorage, parse_budget
from search.experiments.repeat import LATENCY_LABELS, REPEAT_DIR, RepeatComparison, RepeatReport, run_repeat
from search.space import SearchInputError

# --- the report ---------------------------------------------------------------------------------------------------


def _latency_cells(latency: dict[str, float | None], columns: Sequence[str]) -> list[str]:
    return [number(latency.get(c), 3) if c == "machine_speed" else fixed(latency.get(c)) for c in columns]


def winners_table(comparison: RepeatComparison) -> pd.DataFrame:
    """One row per run: its winner's trial, score, #params, latencies and architecture."""
    cols = comparison.latency_columns
    rows = [{"run": w.run, "trial": "-" if w.trial is None else w.trial, "score": number(w.score),
             "params": si(w.params), **dict(zip((LATENCY_LABELS[c] for c in cols), _latency_cells(w.latency, cols))),
             "architecture": w.architecture} for w in comparison.winners]
    return pd.DataFrame(rows)


def differences_table(comparison: RepeatComparison) -> pd.DataFrame:
    """One row per identical proposal whose feasibility differs: per run, fits or not and its latencies."""
    cols = comparison.latency_columns
    rows = []
    for d in comparison.differences:
        row: dict[str, Any] = {"trial": d.trial, "architecture": d.architecture}
        for run, (fits, latency) in enumerate(zip(d.feasible, d.latency), start=1):
            row[f"run {run} fits"] = "yes" if fits else "no"
            row.update(zip((f"run {run} {LATENCY_LABELS[c]}" for c in cols), _latency_cells(latency, cols)))
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(report: RepeatReport, command: str, machine: str) -> str:
    lines = ["# Does the seeded search reproduce?", ""]
    if report.interrupted:
        lines += ["> **Interrupted.** This report covers the runs finished.", ""]
    lines += [f"- machine: {machine}", f"- command: `{command}`",
              f"- {report.times} runs per budget, each a study of its own under `run-<i>/`, "
              f"{report.pause_s:g} s pause between two runs; {report.wall_s / 60:.1f} min in all", ""]
    for budget in report.budgets:
        lines += [f"## Budget {budget.budget_ms:g} ms", "", budget.sentence(), ""]
        c = budget.comparison
        if c is None:
            continue
        lines += [f"Study `{budget.study}` in " + ", ".join(f"`run-{r.run}/`" for r in budget.runs) + ".", "",
                  "### Winner of each run", "", markdown_table(winners_table(c)), "",
                  "### Identical proposals whose feasibility differs", ""]
        if c.differences:
            lines += [markdown_table(differences_table(c)), ""]
        elif c.identical:
            lines += [f"None: each of the {c.identical} identical proposals has the same feasibility in every run.", ""]
        else:
            lines += ["None: no proposal is identical in every run.", ""]
    return "\n".join(lines) + "\n"


def write_repeat(report: RepeatReport, *, command: str, env: dict[str, Any],
                 settings: SearchSettings | None = None, measured_here: bool = True) -> dict[str, Path]:
    """repeat.json and repeat.md in the report's directory, each written atomically (`measured_here`: the runs
    measured on this machine, not through a latency source of the caller's, which decides the predictor gate)."""
    machine = machine_summary(env)
    data = {"command": command, "machine": machine, "environment": env, "times": report.times,
            "pause_s": report.pause_s, "interrupted": report.interrupted, "wall_s": round(report.wall_s, 3),
            "search": _search_summary(settings, measured_here) if settings is not None else None,
            "budgets": [b.to_dict() for b in report.budgets]}
    report.files = {"json": write_json(report.out / "repeat.json", data),
                    "report": write_text(report.out / "repeat.md", markdown(report, command, machine))}
    return report.files


def _search_summary(s: SearchSettings, measured_here: bool) -> dict[str, Any]:
    return {"trials": s.sampling.n_trials, "seed": s.sampling.seed, "objective": s.objective,
            "sampler": s.sampling.sampler, "pareto": s.pareto, "deployment": s.deployment.to_dict(),
            "stop": str(s.measuring.stop), "timeout_s": s.sampling.timeout_s,
            "predictor": s.measuring.gates(s.deployment.runtime, measured_here)}


def print_repeat(report: RepeatReport, console: Console) -> None:
    """Per budget: the winner of each run, the identical proposals whose feasibility differs, the verdict."""
    for budget in report.budgets:
        c = budget.comparison
        if c is not None:
            print_frame(winners_table(c), f"budget {budget.budget_ms:g} ms: the winner of each run", console)
            if c.differences:
                print_frame(differences_table(c), "identical proposals whose feasibility differs", console)
        colour = "green" if c is not None and c.reproduced else "yellow"
        console.print(f"[{colour}]budget {budget.budget_ms:g} ms[/]: {budget.sentence()}", highlight=False)


# --- command line --------------------------------------------------------------------------------------------------


def _at_least_two(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text} must be >= 2 (each run is compared with the others)")
    return value


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = Parser(prog=prog or f"{program_name('search')} repeat", description=__doc__.split("\n")[0])
    p.add_argument("--budget-ms", metavar="MS", nargs="+", required=True,
                   help="latency budget(s): median milliseconds per call; each budget is searched --times times")
    g = p.add_argument_group("repeat")
    g.add_argument("--times", type=_at_least_two, default=2, metavar="N", help="runs per budget, at least 2")
    g.add_argument("--pause-s", type=non_negative_float, default=10.0, metavar="S",
                   help="pause between two runs, in seconds")
    g.add_argument("--out", type=writable_dir, default=None, metavar="DIR",
                   help="where the runs and the report go (default: the results root's search-repeat/<UTC time>; "
                        "the root is $CONTAINER_BENCH_RESULTS, else results/ of this checkout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (each run's search)")
    add_search_arguments(p, single_run=False)
    return p


def main(argv: Sequence[str] | None = None, *, latency_source: LatencySource | None = None,
         scorer: Scorer | None = None) -> int:
    """`python -m search repeat`; `latency_source` and `scorer` replace the real ones (tests)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    tool = "search repeat"
    out = args.out or results_root() / REPEAT_DIR / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    try:
        budgets = [parse_budget(b) for b in args.budget_ms]
        space = space_from_args(args)
        searches = [settings_from_args(args, b, space, StudyStorage(results_dir=out)) for b in budgets]
        report = run_repeat(searches, out, times=args.times, pause_s=args.pause_s, latency_source=latency_source,
                            scorer=scorer)
    except (SearchInputError, bench.BenchInputError) as e:
        return fail(tool, str(e))
    first = searches[0]
    command = f"{program_name('search')} repeat {shlex.join(argv)}"
    write_repeat(report, command=command, env=environment(first.deployment.device, first.deployment.threads),
                 settings=first, measured_here=latency_source is None)
    console = table_console()
    print_repeat(report, console)
    if report.interrupted:
        console.print(f"[yellow]interrupted[/]: the report covers the runs finished: {report.files['report']}")
        return 130
    console.print(f"{report.wall_s / 60:.1f} min. Report: {report.files['report']}", highlight=False)
    return 0


__all__ = ["differences_table", "main", "markdown", "parser", "print_repeat", "winners_table", "write_repeat"]


if __name__ == "__main__":
    sys.exit(main())
