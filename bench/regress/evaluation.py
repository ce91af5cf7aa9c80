"""Measure the regression gate itself: false alarms on unchanged code, detection of a real slowdown.

    python -m bench.regress.evaluation       # 10 + 10 runs of conv, mix, Container-Light against a fresh
                                             # baseline, each on the reference and on the fast path
    python -m bench.regress.evaluation --runtime openvino --rows mix --runs 3
    python -m bench.regress.evaluation --mode against --against HEAD --runs 5

Baseline mode (the default, what `make regress` does): one baseline is measured first, as
`make regress-update` would (to a temporary file, not the committed one), then `--runs` gate runs of
the unchanged code and `--runs` runs with a slowdown injected alternate, each a full gate run (its
own worker process, set-up and rounds). The slowdown (see bench/regress/worker.py): extra in-place
elementwise passes over an input-sized buffer after every call of each row. Their number is found
once, at the start, so that each row is `--slowdown` (15%) slower, measured interleaved; every
slowed run then does exactly that extra work (CONTAINER_BENCH_REGRESS_SLOWDOWN_PASSES), as a
build with a real slowdown would. Against mode does the same with `--against REV` as the
reference, measured interleaved in the same job.

Writes results/gate_eval.md and results/gate_eval.json (bench.kit, atomically).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench import regress
from bench.kit import (Parser, choice_list, fraction, positive_float, positive_int, results_root, writable_file,
                       write_json, write_text)
from bench.env import REPO_ROOT, environment, fingerprint, git_commit, machine_summary
from bench.formatting import markdown_table
from bench.regress import PASSES_ENV, SLOWDOWN_ENV
from bench.runtimes import RUNTIMES, check_runtime
from bench.targets import BenchInputError

DEFAULT_ROWS = "conv,mix,container_light"


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def calibrate_injection(rows, slowdown: float) -> tuple[dict[str, int], dict[str, float]]:
    """Extra passes per row that make it `slowdown` slower, and the slowdown measured for them."""
    os.environ[SLOWDOWN_ENV] = str(slowdown)
    worker = regress.WorkerProcess(REPO_ROOT, "current", regress.DEFAULT_THREADS, inject=True)
    try:
        reply = worker.request({"cmd": "setup", "rows": [r.spec() for r in rows], "threads": regress.DEFAULT_THREADS})
    finally:
        worker.close()
        os.environ.pop(SLOWDOWN_ENV, None)
    return reply["passes"], reply["injected"]


def one_run(args, config: regress.GateConfig, baseline: Path | None, passes: dict[str, int] | None, console) -> dict:
    os.environ.pop(SLOWDOWN_ENV, None)
    if passes:
        os.environ[PASSES_ENV] = json.dumps(passes)
    else:
        os.environ.pop(PASSES_ENV, None)
    start = time.perf_counter()
    try:
        report = regress.run_gate(config, against=args.against if args.mode == "against" else None,
                                  baseline=baseline)
    finally:
        os.environ.pop(PASSES_ENV, None)
    slowdown = args.slowdown if passes else 0.0
    result = {"slowdown": slowdown, "seconds": time.perf_counter() - start, "load": _load(),
              "regressed": [r.row for r in report.regressed], "passes": report.current.passes,
              "rows": {r.row: {"change": r.verdict.change, "p_slower": r.verdict.p_slower,
                               "regressed": r.regressed} for r in report.rows if r.verdict}}
    flagged = ", ".join(result["regressed"]) or "none"
    short = {r.name: r.short for r in config.rows}
    console.print(f"  {'slowed ' if slowdown else 'unchanged'} {result['seconds']:5.0f} s  "
                  + "  ".join(f"{short.get(k, k)} {v['change']:+.1%} (p {v['p_slower']:.1g})"
                              for k, v in result["rows"].items()) + f"  -> regressed: {flagged}", highlight=False)
    return result


def summarise(runs: list[dict], rows: list[str], injected: dict[str, float]) -> dict:
    null = [r for r in runs if not r["slowdown"]]
    slow = [r for r in runs if r["slowdown"]]
    per_row = {}
    for row in rows:
        n_changes = [r["rows"][row]["change"] for r in null if row in r["rows"]]
        s_changes = [r["rows"][row]["change"] for r in slow if row in r["rows"]]
        per_row[row] = {
            "false_alarms": sum(row in r["regressed"] for r in null), "null_runs": len(null),
            "detections": sum(row in r["regressed"] for r in slow), "slowed_runs": len(slow),
            "null_change_median": float(np.median(n_changes)) if n_changes else None,
            "null_change_max": float(np.max(n_changes)) if n_changes else None,
            "slowed_change_median": float(np.median(s_changes)) if s_changes else None,
            "slowed_change_min": float(np.min(s_changes)) if s_changes else None,
            "injected": injected.get(row),
        }
    return {"null_runs": len(null), "false_alarm_runs": sum(bool(r["regressed"]) for r in null),
            "slowed_runs": len(slow), "detected_runs_any": sum(bool(r["regressed"]) for r in slow),
            "detected_runs_all": sum(len(r["regressed"]) == len(rows) for r in slow),
            "row_false_alarms": sum(len(r["regressed"]) for r in null), "row_null_trials": len(null) * len(rows),
            "row_detections": sum(len(r["regressed"]) for r in slow), "row_slowed_trials": len(slow) * len(rows),
            "per_row": per_row}


def markdown(doc: dict) -> str:
    s, a = doc["summary"], doc["settings"]
    env = doc["machine"]
    mode = ("against a baseline measured first (`make regress-update`, "
            f"{a['baseline_rounds']} rounds)" if a["mode"] == "baseline"
            else f"against revision {a['against']} in a temporary worktree, interleaved")
    lines = [
        "# The regression gate, measured",
        "",
        f"{doc['date']}, commit {doc['commit']}, machine {machine_summary(env)} (load average "
        f"{doc['load_start']} at the start, {doc['load_end']} at the end), torch {env['torch_version']}, "
        f"fingerprint {doc['fingerprint']}.",
        "",
        f"Mode: {mode}. Rows: {', '.join(a['rows'])}. Each gate run: its own worker process, {a['rounds']} rounds, "
        f"decision = slowdown >= {a['min_effect']:.0%} and one-sided Mann-Whitney p < {a['alpha']:g}. "
        f"Unchanged and slowed runs alternate. The slowdown: extra in-place elementwise passes over an "
        f"input-sized buffer after each call of a row, as many as made it {a['slowdown']:.0%} slower when "
        f"measured once at the start, the way the gate measures ({a['passes']}; 'injected' below is that "
        f"estimate); the same passes in every slowed run. The gate's own median over the slowed runs "
        f"('measured change, slowed') is the better figure for the slowdown actually injected. "
        f"Total {doc['seconds'] / 60:.1f} minutes.",
        "",
        markdown_table(pd.DataFrame([
            {"": "unchanged code (false alarms)", "runs": s["null_runs"], "runs flagged": s["false_alarm_runs"],
             "rows flagged": f"{s['row_false_alarms']} of {s['row_null_trials']}"},
            {"": f"~{a['slowdown']:.0%} slower (detections)", "runs": s["slowed_runs"],
             "runs flagged": f"{s['detected_runs_any']} (every row: {s['detected_runs_all']})",
             "rows flagged": f"{s['row_detections']} of {s['row_slowed_trials']}"}]), align="lrrr"),
        "",
        markdown_table(pd.DataFrame([
            {"row": row, "false alarms": f"{r['false_alarms']}/{r['null_runs']}",
             "measured change, unchanged: median (max)":
                 f"{r['null_change_median']:+.1%} ({r['null_change_max']:+.1%})",
             "detections": f"{r['detections']}/{r['slowed_runs']}", "injected": f"{r['injected']:+.1%}",
             "measured change, slowed: median (min)":
                 f"{r['slowed_change_median']:+.1%} ({r['slowed_change_min']:+.1%})"}
            for row, r in s["per_row"].items()]), align="lrrrrr"),
    ]
    every_run = pd.DataFrame([
        {"#": i, "code": "slowed" if run["slowdown"] else "unchanged", "seconds": f"{run['seconds']:.0f}",
         **{row: (f"{v['change']:+.1%} (p {v['p_slower']:.1g})" if (v := run["rows"].get(row)) else None)
            for row in a["rows"]},
         "flagged": ", ".join(run["regressed"]) or None}
        for i, run in enumerate(doc["runs"], 1)])
    lines += ["", "Every run:", "", markdown_table(every_run, align="rlr" + "r" * len(a["rows"]) + "l")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    p = Parser(prog="python -m bench.regress.evaluation", description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("baseline", "against"), default="baseline")
    p.add_argument("--against", default="HEAD", help="revision for --mode against (default HEAD)")
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"rows of the suite (default {DEFAULT_ROWS})")
    p.add_argument("--runtime", "--impl", dest="runtime", type=choice_list(RUNTIMES, "runtime"), default=None,
                   help="comma-separated runtimes to run the rows on (default: the rows' runtimes in the gate's "
                        "default suite: reference, and fast for conv, mix and Container-Light)")
    p.add_argument("--runs", type=positive_int, default=10, help="runs of each kind (default 10)")
    p.add_argument("--slowdown", type=fraction, default=0.15, help="injected slowdown (default 0.15)")
    p.add_argument("--rounds", type=positive_int, default=regress.DEFAULT_ROUNDS)
    p.add_argument("--baseline-rounds", type=positive_int, default=regress.DEFAULT_UPDATE_ROUNDS)
    p.add_argument("--min-effect", type=positive_float, default=regress.DEFAULT_MIN_EFFECT)
    p.add_argument("--alpha", type=fraction, default=regress.DEFAULT_ALPHA)
    p.add_argument("--out", type=writable_file, default=results_root() / "gate_eval",
                   help="output stem (.md and .json)")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    try:
        for runtime in args.runtime or ():
            check_runtime(runtime)
        suite = regress.load_suite()
        rows = regress.on_runtimes(suite.rows, args.runtime) if args.runtime else list(suite.rows)
        rows = regress.select_rows(rows, [s.strip() for s in args.rows.split(",") if s.strip()])
        if args.runs < 1 or not 0 < args.slowdown < 1:
            raise BenchInputError("--runs must be >= 1 and --slowdown a fraction such as 0.15")
        # Quiet gate runs (console None): this script prints one line per run itself.
        config = regress.GateConfig(suite, rows, rounds=args.rounds, min_effect=args.min_effect, alpha=args.alpha,
                                    history=None)
        os.environ.pop(SLOWDOWN_ENV, None)
        os.environ.pop(PASSES_ENV, None)
        start, load_start = time.perf_counter(), _load()
        baseline = None
        with tempfile.TemporaryDirectory(prefix="gate-eval-") as tmp:
            if args.mode == "baseline":
                baseline = Path(tmp) / "baseline.json"
                console.print(f"baseline: {len(rows)} rows, {args.baseline_rounds} rounds", highlight=False)
                regress.update_baseline(replace(config, rounds=args.baseline_rounds), path=baseline)
            passes, injected = calibrate_injection(rows, args.slowdown)
            console.print(f"injection: {passes} extra passes, measured slowdown "
                          + ", ".join(f"{k} {v:+.1%}" for k, v in injected.items()), highlight=False)
            runs = []
            for i in range(args.runs):
                console.print(f"pair {i + 1}/{args.runs}", highlight=False)
                for slowed in ((False, True) if i % 2 == 0 else (True, False)):
                    runs.append(one_run(args, config, baseline, passes if slowed else None, console))
        names = [r.name for r in rows]
        doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(),
               "machine": environment("cpu", regress.DEFAULT_THREADS),
               "fingerprint": fingerprint("cpu", regress.DEFAULT_THREADS),
               "load_start": load_start, "load_end": _load(), "seconds": time.perf_counter() - start,
               "settings": {"mode": args.mode, "against": args.against, "rows": names, "runs": args.runs,
                            "runtimes": [r.runtime for r in rows], "slowdown": args.slowdown,
                            "rounds": args.rounds, "baseline_rounds": args.baseline_rounds,
                            "min_effect": args.min_effect, "alpha": args.alpha, "pairs": regress.DEFAULT_PAIRS,
                            "passes": passes, "injected": injected},
               "summary": summarise(runs, names, injected), "runs": runs}
        stem = Path(args.out)
        write_json(stem.with_suffix(".json"), doc)
        write_text(stem.with_suffix(".md"), markdown(doc))
        console.print(markdown(doc), highlight=False)
        return 0
    except BenchInputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
