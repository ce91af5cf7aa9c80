"""The search's own flags and the SearchSettings they give, shared by `python -m search` and the commands that run
the same search (`python -m search repeat`): one definition of every flag, one place that turns them into settings.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import bench
from bench.kit import (fraction, non_negative_float, non_negative_int, positive_float, positive_int, writable_dir,
                       writable_file)

from search.scoring.accuracy import PRUNERS
from search.latency import DEFAULT_STOP, Deployment, default_stop
from search.scoring.data import FASHION_MNIST
from search.settings import (DEFAULT_OBJECTIVE, DEFAULT_RESULTS_DIR, FINALIST_MARGIN, FINALIST_SEEDS, FINALISTS,
                             SAMPLERS, STARTS, Finalists, Measuring, Reporting, Sampling, Scoring, SearchSettings,
                             StudyStorage, add_runtime_argument, list_objectives)
from search.space import SearchSpace
from search.storage import STORAGE_ENV
from search.scoring.training import TrainingSettings


def add_search_arguments(p: argparse.ArgumentParser, *, single_run: bool = True) -> None:
    """Every flag of one search but `--budget-ms` (each command adds its own). `single_run=False` leaves out what
    names one study (`--print-space` and the storage group: --study, --storage, --results-dir); `--no-progress`
    is then the caller's to add."""
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
                   help="tpe (the search), or random: uniform random search, the baseline (see compare --arms)")
    g.add_argument("--start", choices=STARTS, default=None,
                   help="the study's first trials: scaled (the scaled Container-Light members that fit the budget; "
                        "default with tpe) or random (the sampler's own start-up proposals; default with random)")
    g.add_argument("--space", type=Path, default=None, metavar="FILE", help="search space as JSON or YAML")
    g.add_argument("--space-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override the space, e.g. 'stages[2].kind=[conv,attn]', 'kernel_size=[3,5]', "
                        "'stages[0].depth=[1,2]' (repeatable)")
    if single_run:
        g.add_argument("--print-space", action="store_true", help="print the space as YAML and exit")
    g.add_argument("--proxy-inits", type=positive_int, default=3, help="initialisations a proxy is averaged over")
    g.add_argument("--proxy-batch", type=positive_int, default=8, help="mini-batch of the data-dependent proxies")
    g.add_argument("--score-infeasible", action="store_true",
                   help="also score over-budget trials (by default they get #params and FLOPs only)")
    g.add_argument("--recheck", type=non_negative_int, default=None, metavar="N",
                   help="re-measure the top N feasible architectures before the report (default: all of them)")
    g.add_argument("--recheck-margin", type=fraction, default=0.05, metavar="F",
                   help="headroom for the re-measurement: it must fit budget x (1 - F) to stay in the ranking")
    g.add_argument("--finalists", type=int, default=FINALISTS, metavar="N",
                   help=f"train the top N by the objective and the best scaled Container-Light member the study "
                        f"started from, and rank them by validation accuracy (default {FINALISTS}; 0: by the "
                        f"objective alone)")
    g.add_argument("--finalist-data", default=FASHION_MNIST, metavar="SPEC",
                   help="the finalists' training data (default fashion-mnist; skipped if it is not installed)")
    g.add_argument("--finalist-seeds", type=int, default=FINALIST_SEEDS, metavar="N",
                   help=f"training seeds per finalist, its accuracy their mean (default {FINALIST_SEEDS})")
    g.add_argument("--finalist-margin", type=float, default=FINALIST_MARGIN, metavar="F",
                   help=f"validation accuracy by which a finalist must beat the best scaled start to win (default "
                        f"{FINALIST_MARGIN:g}, 2.33 points: the validation's noise; 0: the most accurate wins)")
    train = TrainingSettings()
    g = p.add_argument_group("training (--objective accuracy; the network is the candidate adapted to the data, "
                             "see search/scoring/training.py)")
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
    g.add_argument("--stop-rel-interval", type=positive_float, default=DEFAULT_STOP.rel_interval,
                   help="time until the 95%% interval of the median at the reference speed is within +- this "
                        "fraction of it")
    g.add_argument("--stop-rel-iqr", type=positive_float, default=DEFAULT_STOP.rel_iqr,
                   help="the same for an uncalibrated measurement: IQR / median")
    g.add_argument("--stop-min-runs", type=positive_int, default=DEFAULT_STOP.min_runs)
    g.add_argument("--stop-min-s", type=non_negative_float, default=DEFAULT_STOP.min_time_s)
    g.add_argument("--stop-max-s", type=positive_float, default=None,
                   help=f"time limit per measurement (default: {DEFAULT_STOP.max_time_s:g} s, or 12 x the budget if "
                        f"longer)")
    g.add_argument("--lock-file", type=writable_file, default=None,
                   help="machine-wide lock so that two workers never measure at once (default: "
                        "$CONTAINER_BENCH_SEARCH_LOCK, else container-bench-search-measure.lock in $XDG_RUNTIME_DIR, "
                        "else in .locks/ of the results root); created 0600, a symbolic link is refused")
    g.add_argument("--predictor", action=argparse.BooleanOptionalAction, default=None,
                   help="reject candidates the latency predictor (results/predictor/<fingerprint>.json; built and "
                        "calibrated on first use, minutes) puts clearly over budget, without measuring them and "
                        "without counting them toward --trials; the rest, and every ranked one, are measured for "
                        "real (default: on, except with --runtime aot; --no-predictor measures every proposal)")
    g.add_argument("--predictor-margin", type=non_negative_float, default=0.10, metavar="FRACTION",
                   help="with --predictor: reject only what is predicted above budget x (1 + FRACTION)")
    if not single_run:
        return
    g = p.add_argument_group("storage")
    g.add_argument("--study", default=None, metavar="NAME",
                   help="study name (default: derived from the setting, so the same command resumes)")
    g.add_argument("--storage", default=os.environ.get(STORAGE_ENV) or None, metavar="URL",
                   help=f"any Optuna storage URL (sqlite:///x.db, postgresql://...) or a .journal file; default: "
                        f"${STORAGE_ENV} when set (so that a URL with a password need not be on a command line), "
                        f"else a journal file in the study directory; printed and written with its password as ***")
    g.add_argument("--results-dir", type=writable_dir, default=DEFAULT_RESULTS_DIR,
                   help="one directory per study (default: the results root's search/; the root is "
                        "$CONTAINER_BENCH_RESULTS, else results/ of this checkout)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def space_from_args(args: argparse.Namespace) -> SearchSpace:
    """`--space FILE` (default: the default space) with every `--space-set` applied. Raises SearchInputError."""
    space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
    return space.with_overrides(args.space_set) if args.space_set else space


def settings_from_args(args: argparse.Namespace, budget_ms: float, space: SearchSpace,
                       storage: StudyStorage | None = None) -> SearchSettings:
    """The SearchSettings of one search at `budget_ms` from the flags of add_search_arguments; `storage` is what
    the flags do not give (study name, storage URL, results directory; default: StudyStorage()). Raises
    SearchInputError or BenchInputError naming the flag. Reads no file: the data set is loaded on first use."""
    stop = bench.StopRule(rel_iqr=args.stop_rel_iqr, min_runs=args.stop_min_runs, min_time_s=args.stop_min_s,
                          max_time_s=args.stop_max_s or default_stop(budget_ms).max_time_s,
                          rel_interval=args.stop_rel_interval)
    deployment = Deployment(device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                            threads=args.threads, dtype=args.dtype, runtime=args.runtime)
    training = TrainingSettings(epochs=args.epochs, train_images=args.train_images or None, val_images=args.val_images,
                                batch_size=args.train_batch, lr=args.train_lr, width_div=args.train_width_div,
                                threads=args.train_threads)
    return SearchSettings(
        budget_ms=budget_ms, deployment=deployment, space=space, objective=args.objective, pareto=args.pareto,
        sampling=Sampling(sampler=args.sampler, n_trials=args.trials, timeout_s=args.timeout, seed=args.seed,
                          start=args.start),
        measuring=Measuring(stop=stop, lock_file=args.lock_file and str(args.lock_file), predictor=args.predictor,
                            predictor_margin=args.predictor_margin),
        scoring=Scoring(proxy_inits=args.proxy_inits, proxy_batch=args.proxy_batch,
                        score_infeasible=args.score_infeasible, data=args.data, training=training, pruner=args.pruner),
        storage=storage or StudyStorage(),
        report=Reporting(recheck=args.recheck, recheck_margin=args.recheck_margin, progress=not args.no_progress),
        finalists=Finalists(count=args.finalists, data=args.finalist_data, seeds=args.finalist_seeds,
                            margin=args.finalist_margin))


__all__ = ["add_search_arguments", "settings_from_args", "space_from_args"]
