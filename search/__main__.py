"""`python -m search --budget-ms 25`: the best Container-style network under a latency budget on this device.

Latency is measured on the runtime the network will be deployed on (`--runtime`, default `fast`:
container.optimize; `reference`, `onnxruntime`, `openvino` and `aot`, an AOTInductor package compiled once per
network and cached, are the others). The objective is a
training-free score, or with `--objective accuracy --data fashion-mnist|FILE.npz|DIR` the validation
accuracy of every feasible candidate trained on that data (weak ones pruned early, `--pruner`).

A thin layer: parse the flags, build SearchSettings, call search.run_search, print a summary.
Five more commands publish how far the search can be trusted (each has its own --help):
`python -m search predictor-report` (the latency predictor's accuracy on held-out networks),
`python -m search predictor-bench --budget-ms MS` (trials per minute with and without it),
`python -m search validate-proxy` (rank correlation of every score with trained accuracy),
`python -m search compare --budget-ms MS [MS ...]` (the search against random search and a scaled Container-Light;
`compare-random` is `compare --arms search,random`) and
`python -m search repeat --budget-ms MS` (the same seeded search run again: does it reproduce here?).
Exit status: 0 a ranked report; 2 bad input (one line on stderr), including a worker refused by
a study measured elsewhere; 3 no network fits the budget; 130 interrupted (report written so far).
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import yaml

import bench
from bench.kit import Parser, fail, program_name, table_console

from search.experiments import compare, predictor_report, repeat_report, validate
from search.arguments import add_search_arguments, settings_from_args, space_from_args
from search.report import print_summary
from search.settings import NoFeasibleNetworkError, StudyStorage, parse_budget
from search.space import SearchInputError
from search.study import run_search

EXIT_NO_FEASIBLE = 3
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    prog = program_name("search")
    others = "".join(f"\n  {name:<18}{summary}" for name, (_, summary) in COMMANDS.items())
    p = Parser(prog=prog, description=__doc__.split("\n")[0],
               epilog=f"other commands (each has its own --help: {prog} COMMAND --help):{others}")
    p.add_argument("--budget-ms", metavar="MS",
                   help="latency budget: median milliseconds per call at the deployment setting")
    add_search_arguments(p)
    return p


def compare_random(argv: Sequence[str]) -> int:
    """The former `compare-random` command, kept so that the commands in lab notes still run: it is `compare` with
    the search and random arms only (a later `--arms` in `argv` wins, as argparse takes the last)."""
    return compare.main(["--arms", "search,random", *argv])


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "predictor-report": (predictor_report.main_report, "the latency predictor's accuracy on held-out networks"),
    "predictor-bench": (predictor_report.main_bench, "trials per minute with and without the predictor"),
    "validate-proxy": (validate.main, "rank correlation of every score with trained accuracy"),
    "compare": (compare.main, "the search against random search and a scaled Container-Light, several budgets"),
    "compare-random": (compare_random, "alias of: compare --arms search,random (the search against random search)"),
    "repeat": (repeat_report.main, "the same seeded search run several times: does it reproduce on this machine?"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    args = parser().parse_args(argv)

    try:
        if not args.print_space:
            if args.budget_ms is None:
                raise SearchInputError("--budget-ms: required (the latency budget in milliseconds, "
                                       "e.g. --budget-ms 25)")
            budget = parse_budget(args.budget_ms)
        space = space_from_args(args)
        if args.print_space:
            print(yaml.safe_dump(space.to_dict(), sort_keys=False, default_flow_style=None), end="")
            return 0
        settings = settings_from_args(args, budget, space, StudyStorage(study_name=args.study, url=args.storage,
                                                                        results_dir=args.results_dir))
        settings.dataset()  # --objective accuracy: a bad --data fails here, before anything is measured
        settings.finalists.dataset()  # ... and a bad --finalist-data
    except (SearchInputError, bench.BenchInputError) as e:
        return fail("search", str(e))

    console = table_console()
    try:
        result = run_search(settings)
    except (SearchInputError, bench.BenchInputError) as e:
        return fail("search", str(e))
    except NoFeasibleNetworkError as e:
        return fail("search", str(e), EXIT_NO_FEASIBLE)
    except KeyboardInterrupt:
        return fail("search", "interrupted before the study was opened; nothing was recorded", EXIT_INTERRUPTED)

    print_summary(result, settings.objective, console)
    report = result.files.get("report")
    status = f"{len(result.trials)} trials in the study; this run took {result.elapsed_s:.1f} s"
    if result.interrupted:
        console.print(f"[yellow]interrupted[/]: {status}. Report so far: {report}. "
                      f"Resume: run the same command again with --study {settings.name}")
        return EXIT_INTERRUPTED
    if not result.feasible:
        smallest = result.trials["latency_norm_ms"].min() if len(result.trials) else float("nan")
        return fail("search", f"--budget-ms {settings.budget_ms:g}: no architecture in {len(result.trials)} trials "
                              f"fits (smallest measured latency {smallest:.2f} ms); see {report}", EXIT_NO_FEASIBLE)
    console.print(f"{status}. Report: {report}; winner's config: {result.files.get('best')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
