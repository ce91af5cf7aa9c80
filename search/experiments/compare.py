"""`python -m search compare --budget-ms B [B ...]`: does the search beat random search and a scaled Container-Light?

Three arms at each budget, each giving one winner per `--seeds` seed:

* `search`: exactly what `python -m search` ships (TPE started from the scaled family, the winner the most accurate
  of its finalists: search.finalists), one study per seed;
* `random`: uniform random search (`--sampler random`), its winner the best by the objective (no finalists);
* `scaled`: the hand-designed baseline (search.scaled): Container-Light scaled by width and depth
  multipliers, every member timed through the search's latency stack, the best member by the study's objective
  that fits the budget (the same member for every seed).

Studies and the family share one latency cache (`--out-dir`/latency_cache.json). Each winner is trained with
validate-proxy's protocol (search.experiments.evidence's WinnerTrainer; trainings.csv, reused on a rerun) and
re-measured on the deployed runtime: all winners at a budget in `--remeasure-rounds` rounds, each round every winner
once with the search's BenchLatency, in a seeded shuffled order (a drift of the machine lands on all arms alike); the
re-measured figure is the median over rounds of the search's deciding (normalised) latency. A winner whose
re-measured figure exceeds its budget is listed in the report. Per budget: each arm's mean accuracy and
the paired differences search - scaled and search - random over seeds, with percentile bootstrap intervals.

Writes `--out-dir` (default results/compare/): report.md, accuracy_latency.png, winners.csv, report.json (`winners`:
one entry per budget, arm and seed), trainings.csv, remeasured.json and the studies under studies/.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

import bench
from bench.kit import (Parser, fail, non_negative_float, non_negative_int, positive_float, positive_int, results_root,
                       writable_dir, write_json, write_table)
from container import NetworkConfig

from search.experiments.compare_arms_report import markdown, plot_accuracy_latency, write_report
from search.experiments.evidence import (VALIDATION_SEEDS, VALIDATION_TRAINING, ValidationProtocol, bootstrap_mean,
                                         training_progress, winner_trainer)
from search.experiments.shared_cache import SHARED_CACHE, collect_cache, share_cache
from search.scaled import DEPTHS, WIDTHS, ScaledMember, base_network, best_member, measure_family, scaled_family
from search.latency import (BenchLatency, CachedLatency, Deployment, Latency, LatencySource, MachineLock, config_key,
                            default_stop)
from search.scoring.accuracy import ACCURACY
from search.scoring.data import FASHION_MNIST, Dataset
from search.scoring.proxies import ProxyScorer, Scorer
from search.scoring.training import TrainingSettings
from search.settings import (DEFAULT_OBJECTIVE, FINALIST_MARGIN, FINALIST_SEEDS, Finalists, Measuring,
                             NoFeasibleNetworkError, Reporting, Sampling, Scoring, SearchSettings, StudyStorage,
                             add_runtime_argument, list_objectives, parse_budget)
from search.space import SearchInputError, SearchSpace
from search.study import run_search

ARMS = ("search", "random", "scaled")
PAIRS = (("search", "scaled"), ("search", "random"))
COMPARE_ARMS_DIR = results_root() / "compare"


def parse_arms(text: str | Sequence[str]) -> tuple[str, ...]:
    names = [a.strip() for a in (text.split(",") if isinstance(text, str) else text) if a.strip()]
    bad = [a for a in names if a not in ARMS]
    if bad or not names or len(set(names)) != len(names):
        raise SearchInputError(f"--arms {','.join(names) or text!r}: give distinct arms from {','.join(ARMS)}")
    return tuple(a for a in ARMS if a in names)


@dataclass
class ArmsSettings:
    budgets: tuple[float, ...]
    arms: tuple[str, ...] = ARMS
    trials: int = 30
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    objective: str = DEFAULT_OBJECTIVE
    deployment: Deployment = field(default_factory=Deployment)
    space: SearchSpace = field(default_factory=SearchSpace.default)
    stop: bench.StopRule | None = None  # None: the search's default, scaled to the budget
    data: str | Path | Dataset = FASHION_MNIST
    training: TrainingSettings = field(default_factory=lambda: VALIDATION_TRAINING)
    train_seeds: tuple[int, ...] = VALIDATION_SEEDS
    widths: tuple[float, ...] = WIDTHS
    depths: tuple[float, ...] = DEPTHS
    remeasure_rounds: int = 3
    # How the search arm chooses its winner (python -m search's default: search.finalists); random search's winner is
    # its best by the objective, the plain baseline.
    finalists: Finalists = field(default_factory=Finalists)
    # The search arm's latency predictor gate (None: as python -m search ships it); random search measures everything.
    predictor: bool | None = None
    bootstrap: int = 2000
    out_dir: Path = COMPARE_ARMS_DIR
    lock_file: str | None = None
    workers: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        self.budgets = tuple(sorted({parse_budget(b) for b in self.budgets}))
        if not self.budgets:
            raise SearchInputError("--budget-ms: give one or more budgets")
        self.arms = parse_arms(self.arms)
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SearchInputError(f"--seeds {' '.join(map(str, self.seeds))}: need at least two distinct seeds")
        if not self.train_seeds:
            raise SearchInputError("--train-seeds: need at least one training seed")
        if self.remeasure_rounds < 1:
            raise SearchInputError(f"--remeasure-rounds {self.remeasure_rounds}: must be >= 1")
        self.out_dir = Path(self.out_dir)

    def study(self, budget: float, arm: str, seed: int, dataset: Dataset) -> SearchSettings:
        """The study of the `search` arm (python -m search's defaults) or the `random` arm (the same, random)."""
        sampling = Sampling(n_trials=self.trials, seed=seed, sampler="random" if arm == "random" else "tpe")
        s = SearchSettings(budget_ms=budget, deployment=self.deployment, space=self.space, objective=self.objective,
                           sampling=sampling,
                           measuring=Measuring(stop=self.stop, lock_file=self.lock_file,
                                               predictor=self.predictor if arm == "search" else False),
                           scoring=Scoring(data=dataset if self.objective == ACCURACY else None),
                           storage=StudyStorage(results_dir=self.out_dir / "studies"),
                           report=Reporting(progress=False),
                           # The search's finalists train on the data the winners are evaluated on (its split held out
                           # for validation; the test split is the evaluation's).
                           finalists=replace(self.finalists, data=dataset) if arm == "search" else Finalists(count=0))
        s.storage.study_name = f"{s.name}-seed{seed}"
        return s

    def base(self) -> NetworkConfig:
        """Container-Light at the run's image size and class count."""
        try:
            return base_network(self.space, self.deployment.image_size)
        except ValueError as e:
            raise SearchInputError(f"--image-size {self.deployment.image_size}: the scaled arm's Container-Light "
                                   f"cannot take it ({e})") from None


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# --- the arms ---------------------------------------------------------------------------------------------------


def _scaled_score(settings: ArmsSettings, scorer: Callable[[SearchSettings], Scorer] | None,
                  dataset: Dataset) -> Callable[[NetworkConfig], float]:
    """The study's objective as a score of a config (with --objective accuracy, which would train every member,
    #params: the objective validate-proxy supports)."""
    if scorer is not None:
        one = scorer(settings.study(settings.budgets[0], "search", settings.seeds[0], dataset))
    else:
        d = Scoring()
        one = ProxyScorer(settings.objective if settings.objective != ACCURACY else "params", inits=d.proxy_inits,
                          batch_size=d.proxy_batch, device=settings.deployment.device, seed=0)
    scores: dict[str, float] = {}

    def score(config: NetworkConfig) -> float:
        key = config.to_json(sort_keys=True)
        if key not in scores:
            scores[key] = float(one.evaluate(config).score)
        return scores[key]
    return score


def _search_rows(settings: ArmsSettings, dataset: Dataset, latency_source: LatencySource | None,
                 scorer: Callable[[SearchSettings], Scorer] | None, advance: Callable[[str], None]) -> list[dict]:
    rows = []
    shared = settings.out_dir / SHARED_CACHE
    for budget in settings.budgets:
        for seed in settings.seeds:
            for arm in ("search", "random"):
                if arm not in settings.arms:
                    continue
                s = settings.study(budget, arm, seed, dataset)
                share_cache(shared, s.study_dir)
                row: dict[str, Any] = {"budget_ms": budget, "arm": arm, "seed": seed, "study": s.name}
                try:
                    result = run_search(s, latency_source=latency_source, scorer=scorer(s) if scorer else None)
                except NoFeasibleNetworkError:  # not even the smallest network fits: no winner
                    advance(f"{budget:g} ms, seed {seed}, {arm}: nothing fits")
                    rows.append(row | {"trials_run": 0})
                    continue
                collect_cache(shared, s.study_dir)
                advance(f"{budget:g} ms, seed {seed}, {arm}: {len(result.trials)} trials")
                row["trials_run"] = len(result.trials)
                if not result.ranking.empty:
                    best = result.ranking.iloc[0]
                    row |= {"config": best["config"], "search_latency_ms": float(best["latency_norm_ms"]),
                            "score": float(best["score"])}
                rows.append(row)
    return rows


def _scaled_rows(settings: ArmsSettings, members: list[ScaledMember], latencies: list[Latency],
                 score: Callable[[NetworkConfig], float]) -> list[dict]:
    rows = []
    for budget in settings.budgets:
        # The search's own rule: a member fits when it is within the re-check's headroom (budget - 5%), as the
        # search's winners must be; a member at the budget would be over it, re-measured, half the time.
        chosen = best_member(members, latencies, budget * (1 - Reporting().recheck_margin), score)
        for seed in settings.seeds:
            row: dict[str, Any] = {"budget_ms": budget, "arm": "scaled", "seed": seed, "study": "scaled family"}
            if chosen is not None:
                member, latency = chosen
                row |= {"config": member.config.to_json(sort_keys=True), "search_latency_ms": latency.deciding_ms,
                        "score": score(member.config), "width": member.width, "depth": member.depth}
            rows.append(row)
    return rows


# --- re-measurement ---------------------------------------------------------------------------------------------


def remeasure(settings: ArmsSettings, rows: list[dict], source: LatencySource, context: dict[str, Any]) -> None:
    """Each budget's distinct winners timed in `remeasure_rounds` rounds (a seeded shuffle per round), the median
    of their deciding latencies written into the rows; stored in remeasured.json (a rerun reuses it)."""
    path = settings.out_dir / "remeasured.json"
    try:
        stored: dict[str, list[float]] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    for i, budget in enumerate(settings.budgets):
        configs = {r["config"] for r in rows if r["budget_ms"] == budget and r.get("config")}
        keys = {c: f"{budget:g}|{config_key(NetworkConfig.from_json(c), context)}" for c in sorted(configs)}
        todo = [c for c, k in keys.items() if len(stored.get(k, [])) < settings.remeasure_rounds]
        rng = random.Random(i)
        for _ in range(settings.remeasure_rounds if todo else 0):
            order = list(todo)
            rng.shuffle(order)
            for c in order:
                stored.setdefault(keys[c], []).append(source.measure(NetworkConfig.from_json(c)).deciding_ms)
            write_json(path, stored)
        for r in rows:
            if r["budget_ms"] == budget and r.get("config"):
                r["latency_ms"] = float(np.median(stored[keys[r["config"]]][:settings.remeasure_rounds]))
                r["fits"] = bool(r["latency_ms"] <= budget)


# --- the run ----------------------------------------------------------------------------------------------------


def compare(settings: ArmsSettings, *, latency_source: LatencySource | None = None,
            scorer: Callable[[SearchSettings], Scorer] | None = None,
            protocol: ValidationProtocol | None = None) -> dict[str, Any]:
    """Run every arm at every budget and seed, train and re-measure the winners, write the report.
    `latency_source`, `scorer` (a factory per study) and `protocol` replace the real ones in tests."""
    start = time.perf_counter()
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    dataset, trainer = winner_trainer(settings.data, settings.training, settings.workers, out, protocol)
    d = settings.deployment
    context = {"fingerprint": d.fingerprint(), "deployment": d.to_dict()}
    lock = MachineLock(settings.lock_file)
    source = latency_source or BenchLatency(d, settings.stop or default_stop(max(settings.budgets)), lock)
    members = scaled_family(settings.base(), settings.widths, settings.depths) if "scaled" in settings.arms else []
    per_arm = len(settings.budgets) * len(settings.seeds)
    studies = len([a for a in settings.arms if a != "scaled"])
    total = per_arm * (studies + len(settings.arms) * len(settings.train_seeds))
    with training_progress("compare: searches and trainings (at most)", total, 0,
                           enabled=settings.progress) as advance:
        rows: list[dict] = []
        family_latency: list[Latency] = []
        if members:  # first, so that every study finds the family's latencies in the shared cache
            family_latency = measure_family(members, CachedLatency(source, out / SHARED_CACHE, context, lock=lock))
            rows += _scaled_rows(settings, members, family_latency, _scaled_score(settings, scorer, dataset))
        rows = _search_rows(settings, dataset, latency_source, scorer, advance) + rows
        # Every member is trained, not only the chosen ones: the family's whole accuracy-latency curve is the
        # baseline a user would draw by hand.
        configs = sorted({r["config"] for r in rows if r.get("config")} | {m.config.to_json(sort_keys=True)
                                                                           for m in members})
        trainer.train([(NetworkConfig.from_json(c), t) for c in configs for t in settings.train_seeds], advance)

    def accuracy(config: NetworkConfig) -> float:
        return float(np.mean([trainer.accuracy(config, t) for t in settings.train_seeds]))

    for r in rows:
        if r.get("config"):
            config = NetworkConfig.from_json(r["config"])
            r |= {"winner": config.describe_short(), "accuracy": accuracy(config)}
    family = [{"width": m.width, "depth": m.depth, "config": m.config.to_dict(), "winner": m.config.describe_short(),
               "latency_ms": lat.deciding_ms, "accuracy": accuracy(m.config)}
              for m, lat in zip(members, family_latency)]
    remeasure(settings, rows, source, context)
    gated = Measuring(predictor=settings.predictor).gates(d.runtime, measured_here=latency_source is None)
    summary = _summary(settings, rows, family, time.perf_counter() - start, search_predictor=gated)
    write_table(pd.DataFrame(rows), out / "winners.csv")
    write_json(out / "report.json", summary)
    write_report(summary, out)
    summary["files"] = {"report": str(out / "report.md"), "plot": str(out / "accuracy_latency.png")}
    return summary


def _summary(settings: ArmsSettings, rows: list[dict], family: list[dict], wall_s: float, *,
             search_predictor: bool) -> dict[str, Any]:
    winners = [{"budget_ms": r["budget_ms"], "arm": r["arm"], "seed": r["seed"],
                "accuracy": _nan_to_none(r.get("accuracy", math.nan)),
                "latency_ms": _nan_to_none(r.get("latency_ms", math.nan)),
                "config": json.loads(r["config"]) if r.get("config") else None,
                "search_latency_ms": r.get("search_latency_ms"), "score": r.get("score"), "fits": r.get("fits"),
                "winner": r.get("winner"), **({"width": r.get("width"), "depth": r.get("depth")}
                                              if r["arm"] == "scaled" else {})} for r in rows]
    budgets = []
    for budget in settings.budgets:
        acc = {(w["arm"], w["seed"]): w["accuracy"] for w in winners if w["budget_ms"] == budget}
        per_arm = {arm: bootstrap_mean([a for (name, _), a in acc.items() if name == arm and a is not None],
                                       n_boot=settings.bootstrap) for arm in settings.arms}
        diffs = {}
        for a, b in PAIRS:
            if a in settings.arms and b in settings.arms:
                paired = [acc[(a, s)] - acc[(b, s)] for s in settings.seeds
                          if acc.get((a, s)) is not None and acc.get((b, s)) is not None]
                diffs[f"{a} - {b}"] = bootstrap_mean(paired, n_boot=settings.bootstrap)
        budgets.append({"budget_ms": budget, "per_arm": per_arm, "differences": diffs})
    over = [w for w in winners if w["fits"] is False]
    env = bench.environment(settings.deployment.device, settings.deployment.threads)
    return {"budgets": list(settings.budgets), "arms": list(settings.arms), "trials": settings.trials,
            "seeds": list(settings.seeds), "objective": settings.objective,
            "deployment": settings.deployment.to_dict(), "training": asdict(settings.training),
            "train_seeds": list(settings.train_seeds), "remeasure_rounds": settings.remeasure_rounds,
            "finalist_seeds": settings.finalists.seeds, "finalist_margin": settings.finalists.margin,
            "search_predictor": search_predictor, "family": family,
            "winners": winners, "per_budget": budgets,
            "over_budget": [{k: w[k] for k in ("budget_ms", "arm", "seed", "latency_ms", "winner")} for w in over],
            "environment": env, "machine": bench.machine_summary(env), "wall_s": wall_s,
            "bootstrap": settings.bootstrap}


# --- command line -----------------------------------------------------------------------------------------------


def _multipliers(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text}: must be a number > 0")
    return value


def parser(prog: str = "python -m search compare") -> argparse.ArgumentParser:
    t = VALIDATION_TRAINING
    p = Parser(prog=prog, description="the search against random search and a scaled Container-Light at several "
                                      "budgets; winners trained with validate-proxy's protocol and re-measured")
    p.add_argument("--budget-ms", metavar="MS", nargs="+", required=True, help="latency budgets (median ms per call)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)} (default: all)")
    p.add_argument("--trials", type=positive_int, default=30, help="trials per study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one study per arm each")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=list_objectives())
    p.add_argument("--data", default=FASHION_MNIST, metavar="SPEC", help="the data the winners are trained on")
    p.add_argument("--widths", type=_multipliers, nargs="+", default=list(WIDTHS), help="scaled arm's widths")
    p.add_argument("--depths", type=_multipliers, nargs="+", default=list(DEPTHS), help="scaled arm's depths")
    g = p.add_argument_group("deployment setting (as the search's)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=positive_int, default=1)
    g.add_argument("--image-size", type=positive_int, default=224)
    g.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    g.add_argument("--dtype", default="fp32")
    add_runtime_argument(g)
    g.add_argument("--stop-rel-iqr", type=positive_float, default=None, help="default: the search's stop rule")
    g.add_argument("--stop-min-runs", type=positive_int, default=5)
    g.add_argument("--stop-min-s", type=non_negative_float, default=0.2)
    g.add_argument("--stop-max-s", type=positive_float, default=None)
    g.add_argument("--remeasure-rounds", type=positive_int, default=3, help="rounds timing every winner again")
    g.add_argument("--lock-file", default=None)
    g = p.add_argument_group("training the winners (validate-proxy's protocol)")
    g.add_argument("--epochs", type=positive_int, default=t.epochs)
    g.add_argument("--train-images", type=non_negative_int, default=t.train_images, help="0 for all")
    g.add_argument("--width-div", type=positive_int, default=t.width_div)
    g.add_argument("--train-seeds", type=int, nargs="+", default=list(VALIDATION_SEEDS))
    g.add_argument("--train-threads", type=positive_int, default=None)
    g.add_argument("--workers", type=positive_int, default=1, help="winners trained at once, each in a process")
    g.add_argument("--finalist-seeds", type=int, default=FINALIST_SEEDS, metavar="N",
                   help=f"training seeds per finalist of the search arm (default {FINALIST_SEEDS}, as python -m "
                        f"search ships)")
    g.add_argument("--finalist-margin", type=float, default=FINALIST_MARGIN, metavar="F",
                   help=f"the search arm's --finalist-margin (default {FINALIST_MARGIN:g}, as python -m search ships)")
    g.add_argument("--predictor", action=argparse.BooleanOptionalAction, default=None,
                   help="the search arm's latency predictor gate (default: as python -m search ships, on except with "
                        "--runtime aot); random search never has it")
    p.add_argument("--space", type=Path, default=None, metavar="FILE")
    p.add_argument("--bootstrap", type=positive_int, default=2000)
    p.add_argument("--out-dir", "--results-dir", dest="out_dir", type=writable_dir, default=COMPARE_ARMS_DIR)
    p.add_argument("--no-progress", action="store_true")
    return p


def settings_from_args(args: argparse.Namespace) -> ArmsSettings:
    budgets = tuple(parse_budget(b) for b in args.budget_ms)
    stop = None
    if args.stop_rel_iqr is not None or args.stop_max_s is not None:
        stop = bench.StopRule(rel_iqr=args.stop_rel_iqr or 0.05, min_runs=args.stop_min_runs,
                              min_time_s=args.stop_min_s,
                              max_time_s=args.stop_max_s or default_stop(max(budgets)).max_time_s)
    return ArmsSettings(
        budgets=budgets, arms=parse_arms(args.arms), trials=args.trials, seeds=tuple(args.seeds),
        objective=args.objective,
        deployment=Deployment(device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                              threads=args.threads, dtype=args.dtype, runtime=args.runtime),
        space=SearchSpace.load(args.space) if args.space else SearchSpace.default(), stop=stop, data=args.data,
        training=replace(VALIDATION_TRAINING, epochs=args.epochs, train_images=args.train_images or None,
                         width_div=args.width_div, threads=args.train_threads),
        train_seeds=tuple(args.train_seeds), widths=tuple(args.widths), depths=tuple(args.depths),
        remeasure_rounds=args.remeasure_rounds, bootstrap=args.bootstrap, out_dir=args.out_dir,
        lock_file=args.lock_file, workers=args.workers, progress=not args.no_progress,
        finalists=Finalists(seeds=args.finalist_seeds, margin=args.finalist_margin), predictor=args.predictor)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tool = "search compare"
    try:
        settings = settings_from_args(args)
        if "scaled" in settings.arms:
            settings.base()  # a bad --image-size fails here, before anything is measured
        summary = compare(settings)
    except (SearchInputError, bench.BenchInputError) as e:
        return fail(tool, str(e))
    except KeyboardInterrupt:
        return fail(tool, f"interrupted; rerun the same command to resume from {args.out_dir}", 130)
    for b in summary["per_budget"]:
        diffs = "; ".join(f"{name} {d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}]"
                          for name, d in b["differences"].items())
        print(f"{b['budget_ms']:g} ms: {diffs or 'no pair of arms'}")
    if summary["over_budget"]:
        print(f"{len(summary['over_budget'])} winner(s) over budget when re-measured: see the report")
    print(f"{summary['wall_s'] / 60:.1f} min. Report: {summary['files']['report']}")
    return 0


__all__ = ["ARMS", "ArmsSettings", "COMPARE_ARMS_DIR", "compare", "main", "markdown", "parse_arms", "parser",
           "plot_accuracy_latency", "remeasure"]


if __name__ == "__main__":
    sys.exit(main())
