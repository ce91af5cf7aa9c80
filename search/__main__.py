"""`python -m search --budget-ms 25`: the best Container-style network under a latency budget on this device.

Latency is measured on the runtime the network will be deployed on (`--runtime`, default `fast`:
container.optimize; `reference`, `onnxruntime` and `openvino` are the others). The objective is a
training-free score, or with `--objective accuracy --data fashion-mnist|FILE.npz|DIR` the validation
accuracy of every feasible candidate trained on that data (weak ones pruned early, `--pruner`).

A thin layer: parse the flags, build SearchSettings, call search.run_search, print a summary.
Four more commands publish how far the search can be trusted (each has its own --help):
`python -m search predictor-report` (the latency predictor's accuracy on held-out networks),
`python -m search predictor-bench --budget-ms MS` (trials per minute with and without it),
`python -m search validate-proxy` (rank correlation of every score with trained accuracy) and
`python -m search compare-random --budget-ms MS` (the search's winners against random search's).
Exit status: 0 a ranked report; 2 bad input (one line on stderr), including a worker refused by
a study measured elsewhere; 3 no network fits the budget; 130 interrupted (report written so far).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

import yaml

import bench
from bench.cli_kit import (Parser, fail, fraction, non_negative_float, non_negative_int, positive_float, positive_int,
                           program_name, writable_dir, writable_file)
from bench.report import table_console

from search import compare_random, predictor_report, validate
from search.latency import Deployment, default_stop
from search.accuracy import PRUNERS
from search.report import print_summary
from search.settings import (DEFAULT_OBJECTIVE, DEFAULT_RESULTS_DIR, SAMPLERS, NoFeasibleNetworkError,
                             SearchSettings, add_runtime_argument, list_objectives, parse_budget)
from search.space import SearchInputError, SearchSpace
from search.study import run_search
from search.training import TrainingSettings

EXIT_NO_FEASIBLE = 3
EXIT_INTERRUPTED = 130


def parser() -> argparse.ArgumentParser:
    prog = program_name("search")
    others = "".join(f"\n  {name:<18}{summary}" for name, (_, summary) in COMMANDS.items())
    p = Parser(prog=prog, description=__doc__.split("\n")[0],
               epilog=f"other commands (each has its own --help: {prog} COMMAND --help):{others}")
    p.add_argument("--budget-ms", metavar="MS",
                   help="latency budget: median milliseconds per call at the deployment setting")
    g = p.add_argument_group("deployment setting (what latency is measured at)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--batch-size", type=positive_int, default=1)
    g.add_argument("--image-size", type=positive_int, default=224)
    g.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    g.add_argument("--dtype", default="fp32", help="fp32, or bf16 / fp16 through autocast")
    add_runtime_argument(g)
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=positive_int, default=30,
                   help="the study's number of finished trials; a resumed study runs only the missing ones")
    g.add_argument("--timeout", type=positive_float, default=None, metavar="S", help="stop this run after S seconds")
    g.add_argument("--seed", type=int, default=0, help="sampler and initialisation seed")
    g.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=list_objectives(),
                   help="score to maximise: a training-free proxy, params / flops, or accuracy (trained on --data)")
    g.add_argument("--pareto", action="store_true", help="two objectives: score up, latency down")
    g.add_argument("--sampler", choices=SAMPLERS, default="tpe",
                   help="tpe (the search), or random: uniform random search, the baseline (see compare-random)")
    g.add_argument("--space", type=Path, default=None, metavar="FILE", help="search space as JSON or YAML")
    g.add_argument("--space-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the space, e.g. 'stages[2].kind=[conv,attn]', 'kernel_size=[3,5]', "
                        "'stages[0].depth=[1,2]' (repeatable)")
    g.add_argument("--print-space", action="store_true", help="print the space as YAML and exit")
    g.add_argument("--proxy-inits", type=positive_int, default=3, help="initialisations a proxy is averaged over")
    g.add_argument("--proxy-batch", type=positive_int, default=8, help="mini-batch of the data-dependent proxies")
    g.add_argument("--score-infeasible", action="store_true",
                   help="also score over-budget trials (by default they get #params and FLOPs only)")
    g.add_argument("--recheck", type=non_negative_int, default=None, metavar="N",
                   help="re-measure the top N feasible architectures before the report (default: all of them)")
    g.add_argument("--recheck-margin", type=fraction, default=0.05, metavar="F",
                   help="headroom for the re-measurement: it must fit budget x (1 - F) to stay in the ranking")
    train = TrainingSettings()
    g = p.add_argument_group("training (--objective accuracy; the network is the candidate adapted to the data, "
                             "see search/training.py)")
    g.add_argument("--data", default=None, metavar="SPEC",
                   help="fashion-mnist (Debian's dataset-fashion-mnist, or a directory holding its IDX files), an .npz "
                        "with x_train, y_train, x_test, y_test, or a folder of class subfolders of images")
    g.add_argument("--epochs", type=positive_int, default=train.epochs, metavar="N",
                   help="epochs per candidate, at most")
    g.add_argument("--pruner", choices=PRUNERS, default=None,
                   help="stops weak candidates after an epoch (default: hyperband; none with --pareto)")
    g.add_argument("--train-images", type=non_negative_int, default=train.train_images, metavar="N",
                   help="training subset per candidate, 0 for all")
    g.add_argument("--val-images", type=positive_int, default=train.val_images, metavar="N",
                   help="held out of the training set to validate on (at most a fifth of it)")
    g.add_argument("--train-batch", type=positive_int, default=train.batch_size, metavar="N", help="mini-batch size")
    g.add_argument("--train-lr", type=positive_float, default=train.lr, metavar="LR", help="AdamW learning rate")
    g.add_argument("--train-width-div", type=positive_int, default=train.width_div, metavar="N",
                   help="train every candidate at 1/N of its widths (1: as deployed, several times slower)")
    g.add_argument("--train-threads", type=positive_int, default=None, metavar="N",
                   help="intra-op threads while training (default: torch's)")
    g = p.add_argument_group("latency measurement (bench.StopRule)")
    g.add_argument("--stop-rel-iqr", type=positive_float, default=0.05)
    g.add_argument("--stop-min-runs", type=positive_int, default=5)
    g.add_argument("--stop-min-s", type=non_negative_float, default=0.2)
    g.add_argument("--stop-max-s", type=positive_float, default=None,
                   help="time limit per measurement (default: 1.5 s, or 12 x the budget if longer)")
    g.add_argument("--lock-file", type=writable_file, default=None,
                   help="machine-wide lock so that two workers never measure at once "
                        "(default: $CONTAINER_BENCH_SEARCH_LOCK or /tmp/container-bench-search-measure.lock)")
    g.add_argument("--predictor", action="store_true",
                   help="reject candidates the latency predictor (results/predictor/<fingerprint>.json; built and "
                        "calibrated on first use) puts clearly over budget, without measuring them; the rest, and "
                        "every ranked one, are measured for real")
    g.add_argument("--predictor-margin", type=non_negative_float, default=0.10, metavar="FRACTION",
                   help="with --predictor: reject only what is predicted above budget x (1 + FRACTION)")
    g = p.add_argument_group("storage")
    g.add_argument("--study", default=None, metavar="NAME",
                   help="study name (default: derived from the setting, so the same command resumes)")
    g.add_argument("--storage", default=None, metavar="URL",
                   help="any Optuna storage URL (sqlite:///x.db, postgresql://...) or a .journal file; "
                        "default: a journal file in the study directory")
    g.add_argument("--results-dir", type=writable_dir, default=DEFAULT_RESULTS_DIR,
                   help="one directory per study (default: the results root's search/; the root is "
                        "$CONTAINER_BENCH_RESULTS, else results/ of this checkout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


COMMANDS: dict[str, tuple[Callable[[Sequence[str]], int], str]] = {
    "predictor-report": (predictor_report.main_report, "the latency predictor's accuracy on held-out networks"),
    "predictor-bench": (predictor_report.main_bench, "trials per minute with and without the predictor"),
    "validate-proxy": (validate.main, "rank correlation of every score with trained accuracy"),
    "compare-random": (compare_random.main, "the search's winners against random search's, trained and tested"),
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
        space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
        if args.space_set:
            space = space.with_overrides(args.space_set)
        if args.print_space:
            print(yaml.safe_dump(space.to_dict(), sort_keys=False, default_flow_style=None), end="")
            return 0
        budget_stop = default_stop(budget)
        stop = bench.StopRule(rel_iqr=args.stop_rel_iqr, min_runs=args.stop_min_runs, min_time_s=args.stop_min_s,
                              max_time_s=args.stop_max_s or budget_stop.max_time_s)
        deployment = Deployment(device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                                threads=args.threads, dtype=args.dtype, runtime=args.runtime)
        settings = SearchSettings(
            budget_ms=budget, deployment=deployment, space=space, objective=args.objective, pareto=args.pareto,
            n_trials=args.trials, timeout_s=args.timeout, seed=args.seed, study_name=args.study,
            storage=args.storage, results_dir=args.results_dir, stop=stop, proxy_inits=args.proxy_inits,
            proxy_batch=args.proxy_batch, recheck=args.recheck, recheck_margin=args.recheck_margin,
            score_infeasible=args.score_infeasible,
            progress=not args.no_progress, lock_file=args.lock_file and str(args.lock_file), predictor=args.predictor,
            predictor_margin=args.predictor_margin, data=args.data, pruner=args.pruner, sampler=args.sampler,
            training=TrainingSettings(epochs=args.epochs, train_images=args.train_images or None,
                                      val_images=args.val_images, batch_size=args.train_batch, lr=args.train_lr,
                                      width_div=args.train_width_div, threads=args.train_threads))
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
        smallest = result.trials["latency_median_ms"].min() if len(result.trials) else float("nan")
        return fail("search", f"--budget-ms {settings.budget_ms:g}: no architecture in {len(result.trials)} trials "
                              f"fits (smallest measured latency {smallest:.2f} ms); see {report}", EXIT_NO_FEASIBLE)
    console.print(f"{status}. Report: {report}; winner's config: {result.files.get('best')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
