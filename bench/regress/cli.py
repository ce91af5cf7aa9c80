"""`python -m bench regress`: run the gate against a baseline or a revision, or write a baseline."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console

from bench.kit import choice_list, positive_int, table_console, writable_file, write_json
from bench.env import REPO_ROOT, fingerprint, git_commit
from bench.regress.baselines import (MACHINE_STATE_TOLERANCE, baseline_document, baseline_path, baseline_side,
                                     changed_rows, load_baseline, machine_state_gap)
from bench.regress.outcome import Report, append_history, compare, render
from bench.regress.statistics import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT, check_power
from bench.regress.rows import (DEFAULT_ROUNDS, DEFAULT_SUITE_FILE, DEFAULT_UPDATE_ROUNDS, HISTORY_PATH, on_runtimes,
                                repo_relative, select_rows)
from bench.regress.suite_file import GateConfig, Suite, load_suite
from bench.regress.worker import PASSES_ENV, SLOWDOWN_ENV
from bench.regress.sides import Side, measure_sides, revision_tree, say
from bench.runtimes import RUNTIMES, check_runtime
from bench.targets import BenchInputError

DESCRIPTION = "The throughput regression gate: `python -m bench regress` (and `make regress`)."


def gate_against(current: tuple[Path, str], reference: tuple[Path, str], reference_name: str,
                 config: GateConfig) -> Report:
    """Measure the config's rows on two trees, (path, commit) each, interleaved, and compare `current` with
    `reference`."""
    check_power(config.rounds, config.rounds, config.alpha)
    sides = measure_sides({"current": current, "reference": reference}, config)
    return _report(config, "against", sides["reference"], sides["current"], reference_name,
                   [sides["current"], sides["reference"]])


def run_gate(config: GateConfig | None = None, *, against: str | None = None, baseline: Path | None = None,
             fallback_against: str | None = None) -> Report:
    """Measure the config's rows (default: every row of the project's suite, bench/regress/suites/default.yaml)
    and compare them with the suite's baseline for this machine, a baseline file, or revision `against`.

    A row the baseline lacks (added to the suite since), or holds with another definition, does not fail:
    it is measured and reported as new. A baseline made while the machine ran at another speed (its
    calibration more than MACHINE_STATE_TOLERANCE off this run's) is not compared: with `fallback_against`
    the gate measures that revision interleaved instead; without, it says so and compares all the same."""
    config = config or GateConfig()
    rows, console = config.rows, config.console
    here = (REPO_ROOT, git_commit())
    if against is not None:
        check_power(config.rounds, config.rounds, config.alpha)
        with revision_tree(against) as (tree, commit):
            return gate_against(here, (tree, commit), against, config)
    path = Path(baseline) if baseline else baseline_path(config.suite)
    doc = load_baseline(path)  # before measuring anything: a missing baseline fails at once
    threads = config.threads
    if doc.get("fingerprint") != fingerprint("cpu", threads):
        say(console, f"[yellow]note: {repo_relative(path)} was made on machine {doc.get('fingerprint')}, this "
                     f"is {fingerprint('cpu', threads)}[/]")
    changed = changed_rows(doc, rows, threads)
    if changed:
        say(console, f"[yellow]note: {repo_relative(path)} holds {', '.join(changed)} with another definition "
                     f"(batch, runtime, shape, config, ...): measured, not compared (update the baseline)[/]")
    missing = [r.name for r in rows if r.name not in doc["rows"]]
    if missing:
        say(console, f"[yellow]note: {repo_relative(path)} has no row {', '.join(missing)}: new, measured but not "
                     f"compared (update the baseline)[/]")
    reference = baseline_side(doc, skip=changed)
    known = [len(reference.normalised(r.name)) for r in rows if r.name in doc["rows"]]
    if known:
        check_power(config.rounds, min(known), config.alpha)
    current = measure_sides({"current": here}, config)["current"]
    gap = machine_state_gap(doc, current)
    if abs(gap) > MACHINE_STATE_TOLERANCE:
        state = (f"the machine runs {1 + gap:.2f}x as slow as when {repo_relative(path)} was measured (calibration "
                 f"workload), beyond the {MACHINE_STATE_TOLERANCE:.0%} within which the calibration cancels a drift")
        if fallback_against is not None:
            say(console, f"[yellow]note: {state}; comparing with --against {fallback_against} instead, measured "
                         f"interleaved[/]")
            return run_gate(config, against=fallback_against)
        say(console, f"[yellow]warning: {state}; compared all the same (use --against REV for a comparison "
                     f"in one machine state)[/]")
    return _report(config, "baseline", reference, current, f"baseline {repo_relative(path)}", [current])


def _report(config: GateConfig, mode: str, reference: Side, current: Side, reference_name: str,
            measured: Sequence[Side]) -> Report:
    report = Report(mode, reference, current, compare(reference, current, config), config.min_effect, config.alpha,
                    reference_name)
    if config.history is not None:
        append_history(config.history, measured, mode, config.threads, [r.row for r in report.regressed],
                       config.rows, config.suite.name)
    return report


def update_baseline(config: GateConfig | None = None, path: Path | None = None) -> Path:
    """Measure the config's rows in its rounds (`--update`: DEFAULT_UPDATE_ROUNDS) and write them as the
    suite's baseline for this machine, or to `path`."""
    config = config or GateConfig(rounds=DEFAULT_UPDATE_ROUNDS)
    side = measure_sides({"current": (REPO_ROOT, git_commit())}, config)["current"]
    if side.errors:
        name, error = next(iter(side.errors.items()))
        raise BenchInputError(f"row {name!r}: cannot be built ({error}); no baseline written")
    path = Path(path) if path else baseline_path(config.suite)
    write_json(path, baseline_document(side, config))
    if config.history is not None:
        append_history(config.history, [side], "update", config.threads, rows=config.rows, suite=config.suite.name)
    return path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument("--against", metavar="REV", default=None,
                        help="compare with git revision REV, checked out in a temporary worktree and measured "
                             "interleaved with this tree (no stored baseline needed)")
    parser.add_argument("--fallback-against", metavar="REV", default=None,
                        help="compare with the committed baseline where this machine has one, else with REV as "
                             "--against does (what .ci/run uses: CI machines come and go)")
    parser.add_argument("--suite", metavar="FILE", default=DEFAULT_SUITE_FILE,
                        help=f"the suite file (YAML or JSON: rows of block kinds at shapes, registered networks, "
                             f"config files, module:callable models, each with batch, runtime, dtype, threads); "
                             f"default: the project's own, {repo_relative(DEFAULT_SUITE_FILE)}")
    parser.add_argument("--update", action="store_true",
                        help="measure and write the suite's baseline for this machine "
                             "(results/baselines/<suite name>/<machine fingerprint>.json)")
    parser.add_argument("--baseline", default=None,
                        help="baseline file (default results/baselines/<suite name>/<machine fingerprint>.json)")
    parser.add_argument("--rows", default=None,
                        help="comma-separated subset of the suite, by kind, network, model or name (default: all)")
    parser.add_argument("--runtime", "--impl", dest="runtime", type=choice_list(RUNTIMES, "runtime"), default=None,
                        metavar="RUNTIMES",
                        help=f"comma-separated runtimes to run every row of the suite on ({', '.join(RUNTIMES)}); "
                             f"default: each row's own (--impl: the old name)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"timed rounds per row (default {DEFAULT_ROUNDS}; {DEFAULT_UPDATE_ROUNDS} with --update)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="intra-op threads of the rows without their own (default: the suite's, else 1); with "
                             "the machine, it keys the baseline")
    parser.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                        help=f"smallest slowdown that fails, as a fraction (default {DEFAULT_MIN_EFFECT})")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"significance level of the one-sided Mann-Whitney U test (default {DEFAULT_ALPHA})")
    parser.add_argument("--history", type=writable_file, default=HISTORY_PATH, help="history file to append to")
    parser.add_argument("--no-history", action="store_true", help="do not append to the history file")
    parser.add_argument("--json", type=writable_file, default=None, help="also write the report as JSON to this file")


def _validate(args: argparse.Namespace) -> None:
    if args.rounds is None:
        args.rounds = DEFAULT_UPDATE_ROUNDS if args.update else DEFAULT_ROUNDS
    if args.rounds < 3:
        raise BenchInputError(f"--rounds {args.rounds}: need at least 3 rounds for a test of significance")
    if not 0 < args.min_effect < 10:
        raise BenchInputError(f"--min-effect {args.min_effect}: a fraction such as 0.10")
    if not 0 < args.alpha < 1:
        raise BenchInputError(f"--alpha {args.alpha}: must be between 0 and 1")
    for runtime in args.runtime or ():
        check_runtime(runtime)  # a known name whose package is missing: say which package
    if args.update and (args.against or args.fallback_against):
        raise BenchInputError("--update and --against: a baseline is written from this tree only; pick one")
    if args.against and args.fallback_against:
        raise BenchInputError("--against and --fallback-against: pick one")



def _fall_back(args: argparse.Namespace, suite: Suite) -> None:
    if args.fallback_against and not args.baseline and not baseline_path(suite).exists():
        print(f"note: no baseline for this machine ({repo_relative(baseline_path(suite))}); comparing with "
              f"--against {args.fallback_against} instead", file=sys.stderr)
        args.against = args.fallback_against


def main(args: argparse.Namespace) -> int:
    """Exit status: 0 nothing regressed, 1 something regressed, 2 bad input."""
    console = Console(stderr=True)
    out = table_console()
    try:
        _validate(args)
        suite = load_suite(args.suite, args.threads)
        _fall_back(args, suite)
        rows = on_runtimes(suite.rows, args.runtime) if args.runtime else list(suite.rows)
        rows = select_rows(rows, [s.strip() for s in args.rows.split(",") if s.strip()] if args.rows else None)
        config = GateConfig(suite, rows, rounds=args.rounds, min_effect=args.min_effect, alpha=args.alpha,
                            history=None if args.no_history else Path(args.history), console=console)
        baseline = Path(args.baseline) if args.baseline else None
        if args.update:
            if os.environ.get(SLOWDOWN_ENV) or os.environ.get(PASSES_ENV):
                raise BenchInputError(f"{SLOWDOWN_ENV} or {PASSES_ENV} is set: refusing to write a baseline with "
                                      f"an injected slowdown")
            path = update_baseline(config, path=baseline)
            out.print(f"wrote baseline {repo_relative(path)} (suite {suite.name}, {len(rows)} rows, {args.rounds} "
                      f"rounds, commit {git_commit()}, machine {fingerprint('cpu', suite.threads)})", highlight=False)
            return 0
        report = run_gate(config, against=args.against, baseline=baseline,
                          fallback_against=None if args.against else args.fallback_against)
        render(report, out)
        if args.json:
            write_json(args.json, report.to_json())
        return 1 if report.regressed else 0
    except BenchInputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
