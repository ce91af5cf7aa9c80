"""`python -m search compare-random --budget-ms B`: does the search beat random search at the same budget?

The sanity check every NAS result owes (Li and Talwalkar, "Random Search and Reproducibility for NAS", 2019). For
each `--seeds` seed, one study with the search's sampler (TPE, `--sampler tpe`) and one with uniform random search
(`--sampler random`), with the same budget, trial count, objective, space and deployment setting; each study's
winner is its best feasible architecture after the re-check (its best.json). Both samplers' studies go through
the search's normal latency stack, and share one latency cache (this machine's, in `--out-dir`): an architecture
both samplers propose is measured once. Each winner is then trained with validate-proxy's protocol
(search.experiments.evidence: the same fidelity and training seeds; test accuracy, mean over training seeds), and the
report gives each sampler's mean accuracy and the paired difference TPE - random over seeds, with bootstrap intervals,
and one sentence stating the result whichever way it goes.

Writes `--out-dir` (default results/search_vs_random/): report.md, accuracy.png, runs.csv (one row per seed and
sampler), trainings.csv (one row per trained winner and training seed; a rerun reuses them), report.json, and the
studies under studies/ (a rerun resumes them).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

import bench
from bench.kit import (Parser, fail, non_negative_float, non_negative_int, positive_float, positive_int, results_root,
                       writable_dir, write_json, write_table, write_text)
from container import NetworkConfig

from search.scoring.accuracy import ACCURACY
from search.scoring.data import FASHION_MNIST, Dataset, load_data
from search.experiments.evidence import (VALIDATION_SEEDS, VALIDATION_TRAINING, TrainingPool, ValidationProtocol,
                                         bootstrap_mean, training_progress)
from search.experiments.compare_report import markdown, plot_accuracy, table
from search.latency import Deployment, LatencySource, default_stop
from search.scoring.proxies import Scorer
from search.settings import (DEFAULT_OBJECTIVE, SAMPLERS, Measuring, NoFeasibleNetworkError, Reporting, Sampling,
                             Scoring, SearchSettings, StudyStorage, add_runtime_argument, list_objectives, parse_budget)
from search.space import SearchInputError, SearchSpace
from search.study import run_search
from search.scoring.training import TrainingSettings

COMPARE_DIR = results_root() / "search_vs_random"
SHARED_CACHE = "latency_cache.json"


@dataclass
class CompareSettings:
    budget_ms: float
    trials: int = 30
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    objective: str = DEFAULT_OBJECTIVE
    deployment: Deployment = field(default_factory=Deployment)
    space: SearchSpace = field(default_factory=SearchSpace.default)
    stop: bench.StopRule | None = None
    data: str | Path | Dataset = FASHION_MNIST  # trains the winners (and is the objective's data with accuracy)
    training: TrainingSettings = field(default_factory=lambda: VALIDATION_TRAINING)
    train_seeds: tuple[int, ...] = VALIDATION_SEEDS
    bootstrap: int = 2000
    out_dir: Path = COMPARE_DIR
    workers: int = 1  # winners trained at once, each in its own process
    progress: bool = True

    def __post_init__(self) -> None:
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SearchInputError(f"--seeds {' '.join(map(str, self.seeds))}: need at least two distinct seeds "
                                   f"(5 or more for the published comparison)")
        if not self.train_seeds:
            raise SearchInputError("--train-seeds: need at least one training seed")
        self.out_dir = Path(self.out_dir)

    def search(self, seed: int, sampler: str, dataset: Dataset) -> SearchSettings:
        s = SearchSettings(
            budget_ms=self.budget_ms, deployment=self.deployment, space=self.space, objective=self.objective,
            sampling=Sampling(sampler=sampler, n_trials=self.trials, seed=seed), measuring=Measuring(stop=self.stop),
            scoring=Scoring(data=dataset if self.objective == ACCURACY else None, training=self.training),
            storage=StudyStorage(results_dir=self.out_dir / "studies"), report=Reporting(progress=False))
        s.storage.study_name = f"{s.name}-seed{seed}"  # the default name has no seed: one study per seed
        return s


# --- one latency cache for every study -----------------------------------------------------------------------------


def share_cache(shared: Path, study_dir: Path) -> None:
    """Give a study the latencies measured so far (same machine and deployment: the keys say so)."""
    study_cache = study_dir / SHARED_CACHE
    if shared.exists() and not study_cache.exists():
        study_dir.mkdir(parents=True, exist_ok=True)
        write_text(study_cache, shared.read_text())


def collect_cache(shared: Path, study_dir: Path) -> None:
    """Add a study's new measurements to the shared cache."""
    def entries(path: Path) -> dict[str, Any]:
        try:
            return json.loads(path.read_text()).get("entries", {})
        except (OSError, ValueError):
            return {}

    merged = entries(shared) | entries(study_dir / SHARED_CACHE)
    if merged:
        write_json(shared, {"version": 1, "entries": merged})


# --- the winners' accuracies --------------------------------------------------------------------------------------


class WinnerTrainer:
    """Trains winners with the validation protocol, once per architecture and training seed (trainings.csv)."""

    def __init__(self, pool: TrainingPool, path: Path, identity: dict[str, Any]):
        self.pool, self.path, self.identity = pool, path, json.dumps(identity, sort_keys=True)
        self.rows: list[dict[str, Any]] = []
        try:
            old = pd.read_csv(path)
            self.rows = old[old["protocol"] == self.identity].to_dict(orient="records")
        except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
            pass

    def _stored(self, config: NetworkConfig, seed: int) -> float | None:
        key = config.to_json(sort_keys=True)
        return next((float(r["accuracy"]) for r in self.rows if r["config"] == key and int(r["seed"]) == seed), None)

    def train(self, pairs: Sequence[tuple[NetworkConfig, int]], advance: Callable[[str], None]) -> None:
        """Train every (config, seed) not trained yet, in the pool; each result is written as it comes."""
        jobs, seen = [], set()
        for config, seed in pairs:
            key = (config.to_json(sort_keys=True), seed)
            if key not in seen:
                seen.add(key)
                if self._stored(config, seed) is None:
                    jobs.append((key, config, seed))
        for (key, seed), result in self.pool.run(jobs):
            self.rows.append({"config": key, "seed": seed, "accuracy": result.test_accuracy,
                              "train_s": result.train_s, "protocol": self.identity})
            write_table(pd.DataFrame(self.rows), self.path)
            advance(f"winner {NetworkConfig.from_json(key).describe_short()}, training seed {seed}: "
                    f"test accuracy {result.test_accuracy:.3f}")

    def accuracy(self, config: NetworkConfig, seed: int) -> float:
        stored = self._stored(config, seed)
        if stored is None:
            raise KeyError(f"{config.describe_short()} seed {seed} was not trained")
        return stored


def winner_trainer(data: str | Path | Dataset, training: TrainingSettings, workers: int, out_dir: Path,
                   protocol: ValidationProtocol | None = None) -> tuple[Dataset, WinnerTrainer]:
    """The data set and the trainer of a comparison's winners (its trainings.csv in `out_dir`, reused on a rerun)."""
    dataset = data if isinstance(data, Dataset) else load_data(data)
    protocol = protocol or ValidationProtocol(dataset, training)
    return dataset, WinnerTrainer(TrainingPool(protocol, data, workers), out_dir / "trainings.csv",
                                  {"data": dataset.digest, "training": protocol.settings.identity()})


# --- the run -----------------------------------------------------------------------------------------------------


def compare_random(settings: CompareSettings, *, latency_source: LatencySource | None = None,
                   scorer: Callable[[SearchSettings], Scorer] | None = None,
                   protocol: ValidationProtocol | None = None) -> dict[str, Any]:
    """Run both samplers per seed, then train the winners (in `settings.workers` processes), write the report.
    `latency_source`, `scorer` (a factory per study) and `protocol` replace the real ones in tests."""
    start = time.perf_counter()
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    dataset, trainer = winner_trainer(settings.data, settings.training, settings.workers, out, protocol)
    shared = out / SHARED_CACHE
    searches: list[tuple[int, str, SearchSettings, pd.DataFrame, dict[str, Any]]] = []
    total = len(settings.seeds) * len(SAMPLERS) * (1 + len(settings.train_seeds))
    with training_progress("compare-random: searches and trainings", total, 0, enabled=settings.progress) as advance:
        for seed in settings.seeds:
            for sampler in SAMPLERS:
                s = settings.search(seed, sampler, dataset)
                share_cache(shared, s.study_dir)
                result = run_search(s, latency_source=latency_source, scorer=scorer(s) if scorer else None)
                collect_cache(shared, s.study_dir)
                advance(f"seed {seed}, {sampler}: {len(result.trials)} trials")
                searches.append((seed, sampler, s, result.ranking,
                                 {"trials_run": len(result.trials), "latency_measured": result.cache_misses,
                                  "latency_cached": result.cache_hits}))
        winners = [NetworkConfig.from_json(ranking.iloc[0]["config"]) for *_, ranking, _ in searches
                   if not ranking.empty]
        trained_before = total - len(searches) - len(winners) * len(settings.train_seeds)
        for _ in range(trained_before):
            advance("no feasible winner")
        trainer.train([(config, t) for config in winners for t in settings.train_seeds], advance)
        runs = [_winner_row(seed, sampler, s, ranking, trainer, settings.train_seeds) | counts
                for seed, sampler, s, ranking, counts in searches]
    frame = pd.DataFrame(runs)
    summary = _summary(settings, frame, time.perf_counter() - start)
    write_table(frame, out / "runs.csv")
    write_json(out / "report.json", summary)
    plot_accuracy(frame, out / "accuracy.png")
    write_text(out / "report.md", markdown(summary, frame))
    summary["files"] = {"report": str(out / "report.md")}
    return summary


def _winner_row(seed: int, sampler: str, s: SearchSettings, ranking: pd.DataFrame, trainer: WinnerTrainer,
                train_seeds: Sequence[int]) -> dict[str, Any]:
    row: dict[str, Any] = {"seed": seed, "sampler": sampler, "study": s.name}
    if ranking.empty:
        return row | {"winner": None, "accuracy": math.nan}
    best = ranking.iloc[0]
    config = NetworkConfig.from_json(best["config"])
    accs = [trainer.accuracy(config, train_seed) for train_seed in train_seeds]
    return row | {"trial": int(best["trial"]), "winner": config.describe_short(), "latency_ms":
                  float(best["latency_median_ms"]), "score": float(best["score"]),
                  **{f"accuracy_seed{t}": a for t, a in zip(train_seeds, accs)}, "accuracy": float(np.mean(accs)),
                  "config": best["config"]}


def _summary(settings: CompareSettings, frame: pd.DataFrame, wall_s: float) -> dict[str, Any]:
    wide = frame.pivot(index="seed", columns="sampler", values="accuracy")
    per_sampler = {name: bootstrap_mean(wide[name].dropna().to_numpy(), n_boot=settings.bootstrap)
                   for name in SAMPLERS}
    paired = (wide["tpe"] - wide["random"]).dropna()
    diff = bootstrap_mean(paired.to_numpy(), n_boot=settings.bootstrap)
    same = int(sum(a == b for a, b in frame.pivot(index="seed", columns="sampler", values="winner")
                   [list(SAMPLERS)].itertuples(index=False, name=None) if a is not None))
    env = bench.environment(settings.deployment.device, settings.deployment.threads)
    return {"budget_ms": settings.budget_ms, "trials": settings.trials, "seeds": list(settings.seeds),
            "objective": settings.objective, "deployment": settings.deployment.to_dict(),
            "training": asdict(settings.training), "train_seeds": list(settings.train_seeds),
            "per_sampler": per_sampler, "difference": diff, "same_winner": same, "sentence": verdict(diff, same),
            "environment": env, "machine": bench.machine_summary(env), "wall_s": wall_s,
            "bootstrap": settings.bootstrap}


def verdict(diff: dict[str, float], same_winner: int = 0) -> str:
    """The result in one sentence, whichever way it goes."""
    n, mean, lo, hi = diff["n"], diff["mean"], diff["lo"], diff["hi"]
    if n == 0 or not math.isfinite(mean):
        return "No seed gave both samplers a feasible winner: nothing to compare."
    pts = f"{100 * mean:+.2f} points [{100 * lo:+.2f}, {100 * hi:+.2f}] over {n} seeds"
    ties = f" ({same_winner} of {n} seeds picked the same architecture)" if same_winner else ""
    if lo > 0:
        return f"The search (TPE) beats random search: its winners' test accuracy is higher by {pts}{ties}."
    if hi < 0:
        return f"Random search beats the search (TPE): TPE's winners' test accuracy differs by {pts}{ties}."
    return (f"The search (TPE) is not shown to beat random search: the paired difference in test accuracy is "
            f"{pts}, an interval that includes zero{ties}.")


# --- command line ------------------------------------------------------------------------------------------------


def parser(prog: str = "python -m search compare-random") -> argparse.ArgumentParser:
    t = VALIDATION_TRAINING
    p = Parser(prog=prog, description="the search (TPE) against random search at the same budget and trials; "
                                      "winners trained with validate-proxy's protocol")
    p.add_argument("--budget-ms", metavar="MS", required=True, help="latency budget (median ms per call)")
    p.add_argument("--trials", type=positive_int, default=30, help="trials per study")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="one TPE and one random study each")
    p.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=list_objectives())
    p.add_argument("--data", default=FASHION_MNIST, metavar="SPEC", help="the data the winners are trained on")
    g = p.add_argument_group("deployment setting (as the search's)")
    g.add_argument("--device", default="cpu")
    g.add_argument("--batch-size", type=positive_int, default=1)
    g.add_argument("--image-size", type=positive_int, default=224)
    g.add_argument("--threads", type=positive_int, default=None, help="intra-op threads (default: torch's)")
    g.add_argument("--dtype", default="fp32")
    add_runtime_argument(g)
    g.add_argument("--stop-rel-iqr", type=positive_float, default=0.05)
    g.add_argument("--stop-min-runs", type=positive_int, default=5)
    g.add_argument("--stop-min-s", type=non_negative_float, default=0.2)
    g.add_argument("--stop-max-s", type=positive_float, default=None)
    g = p.add_argument_group("training the winners (validate-proxy's protocol)")
    g.add_argument("--epochs", type=positive_int, default=t.epochs)
    g.add_argument("--train-images", type=non_negative_int, default=t.train_images, help="0 for all")
    g.add_argument("--width-div", type=positive_int, default=t.width_div)
    g.add_argument("--train-seeds", type=int, nargs="+", default=list(VALIDATION_SEEDS))
    g.add_argument("--train-threads", type=positive_int, default=None,
                   help="intra-op threads per training (default: torch's; with --workers, the cores shared out)")
    g.add_argument("--workers", type=positive_int, default=1,
                   help="winners trained at once, each in its own process (the accuracies do not change)")
    p.add_argument("--space", type=Path, default=None, metavar="FILE")
    p.add_argument("--bootstrap", type=positive_int, default=2000)
    p.add_argument("--out-dir", type=writable_dir, default=COMPARE_DIR)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tool = "search compare-random"
    try:
        budget = parse_budget(args.budget_ms)
        stop = bench.StopRule(rel_iqr=args.stop_rel_iqr, min_runs=args.stop_min_runs, min_time_s=args.stop_min_s,
                              max_time_s=args.stop_max_s or default_stop(budget).max_time_s)
        settings = CompareSettings(
            budget_ms=budget, trials=args.trials, seeds=tuple(args.seeds), objective=args.objective,
            deployment=Deployment(device=args.device, batch_size=args.batch_size, image_size=args.image_size,
                                  threads=args.threads, dtype=args.dtype, runtime=args.runtime),
            space=SearchSpace.load(args.space) if args.space else SearchSpace.default(), stop=stop, data=args.data,
            training=replace(VALIDATION_TRAINING, epochs=args.epochs, train_images=args.train_images or None,
                             width_div=args.width_div, threads=args.train_threads),
            train_seeds=tuple(args.train_seeds), bootstrap=args.bootstrap, out_dir=args.out_dir,
            workers=args.workers, progress=not args.no_progress)
        summary = compare_random(settings)
    except (SearchInputError, bench.BenchInputError) as e:
        return fail(tool, str(e))
    except NoFeasibleNetworkError as e:
        return fail(tool, str(e), 3)
    except KeyboardInterrupt:
        return fail(tool, f"interrupted; rerun the same command to resume from {args.out_dir}", 130)
    print(table(summary))
    print(f"{summary['sentence']} {summary['wall_s'] / 60:.1f} min. Report: {summary['files']['report']}")
    return 0


__all__ = ["COMPARE_DIR", "CompareSettings", "WinnerTrainer", "collect_cache", "compare_random", "main", "parser",
           "share_cache", "verdict", "winner_trainer"]


if __name__ == "__main__":
    sys.exit(main())
