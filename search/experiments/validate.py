"""`python -m search validate-proxy --data fashion-mnist`: does the search's score track trained accuracy?

Training-free proxies are known to fail in some spaces and often do no better than the parameter count (Ning et
al., NeurIPS 2021; White et al., 2022). So this command trains a seeded sample of architectures from the search
space on real data and measures how well each score ranks them:

* architectures: `--archs` networks drawn uniformly from the space (search.space.sample_configs, `--sample-seed`);
* scores: every registered proxy (naswot, synflow, params, flops) computed exactly as the search computes them,
  on the deployed network (`--image-size`, default the search's 224), and the cheap low-fidelity baseline
  "accuracy after one epoch" (seed 0's validation accuracy after the first epoch of its run: no extra training);
* training: search.scoring.training's adaptation rule and loop (as `--objective accuracy`), at the fidelity of
  search.experiments.evidence.VALIDATION_TRAINING unless the flags change it, once per `--seeds` seed; the measured
  accuracy is the mean over seeds of the test-split accuracy after the last epoch (the test split chooses nothing);
* statistics: Spearman's rho and Kendall's tau of each score against the mean accuracy, with percentile bootstrap
  95% intervals over architectures; the seed-to-seed noise ceiling (seed 0's accuracies against seed 1's), which
  the report compares with 0.7; and which objective the evidence supports
  (search.experiments.evidence.supported_objective).

Resumable: results go to `--out-dir` after every architecture (atomically); a rerun with the same settings skips
what accuracies.csv and scores.csv already hold, and one with other settings starts over. Files: report.md,
accuracies.csv (architecture x seed), scores.csv (one row per architecture), correlations.csv, report.json,
scores_vs_accuracy.png, run.json (the settings the rows belong to).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

import bench
from bench.kit import (Parser, fail, non_negative_int, positive_float, positive_int, writable_dir, write_json,
                       write_table, write_text)
from container import NetworkConfig

from search.scoring.data import FASHION_MNIST, load_data
from search.experiments.evidence import (SIZE_SCORES, VALIDATION_SEEDS, VALIDATION_TRAINING, TrainingPool,
                                         ValidationProtocol, noise_ceiling, rank_correlations, supported_objective,
                                         training_progress)
from search.scoring.proxies import ProxyScorer, list_proxies
from search.space import SearchInputError, SearchSpace, sample_configs
from search.settings import DEFAULT_OBJECTIVE, VALIDATION_DIR
from search.scoring.training import TrainingSettings
from search.experiments.validate_report import markdown, plot_scores, table

SAMPLE_SEED = 3000
ONE_EPOCH = "one_epoch"  # the low-fidelity baseline's column
CEILING_TARGET = 0.7


@dataclass(frozen=True)
class ValidationSettings:
    data: str = FASHION_MNIST
    archs: int = 40
    seeds: tuple[int, ...] = VALIDATION_SEEDS
    training: TrainingSettings = field(default_factory=lambda: VALIDATION_TRAINING)
    image_size: int = 224  # the deployment's: where the architectures are sampled and the proxies computed
    sample_seed: int = SAMPLE_SEED
    bootstrap: int = 2000
    proxy_inits: int = 3
    proxy_batch: int = 8
    workers: int = 1  # training processes (the accuracies do not depend on it)
    progress: bool = True

    def validate(self) -> None:
        if self.archs < 3:
            raise SearchInputError(f"--archs {self.archs}: must be >= 3 (40 or more for the published table)")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SearchInputError(f"--seeds {' '.join(map(str, self.seeds))}: need at least two distinct "
                                   f"training seeds")
        for name in ("image_size", "bootstrap", "proxy_inits", "proxy_batch", "workers"):
            if getattr(self, name) < 1:
                raise SearchInputError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")

    def identity(self, space: SearchSpace, digest: str) -> dict[str, Any]:
        """What the rows of a run depend on: a rerun resumes only when this is unchanged."""
        return {"data_digest": digest, "seeds": list(self.seeds), "training": self.training.identity(),
                "image_size": self.image_size, "sample_seed": self.sample_seed, "proxy_inits": self.proxy_inits,
                "proxy_batch": self.proxy_batch, "space": space.to_dict()}


# --- resume ------------------------------------------------------------------------------------------------------


def _load_previous(out_dir: Path, identity: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """(accuracy rows, score rows, wall seconds so far) of an earlier run with the same identity, else empty."""
    empty = (pd.DataFrame(), pd.DataFrame(), 0.0)
    try:
        run = json.loads((out_dir / "run.json").read_text())
        if run.get("identity") != json.loads(json.dumps(identity)):
            _log(f"{out_dir}: the rows there come from other settings; starting over")
            return empty
        return (pd.read_csv(out_dir / "accuracies.csv"), pd.read_csv(out_dir / "scores.csv"),
                float(run.get("wall_s", 0.0)))
    except (OSError, ValueError, KeyError, pd.errors.EmptyDataError):
        return empty


def _log(message: str) -> None:
    print(f"search: {message}", file=sys.stderr, flush=True)


# --- scores ------------------------------------------------------------------------------------------------------


def proxy_scores(config: NetworkConfig, settings: ValidationSettings, threads: int | None) -> dict[str, float]:
    """Every registered proxy on the deployed network, as the search computes it (seed 0)."""
    out: dict[str, float] = {}
    for name in list_proxies():
        if name in SIZE_SCORES and name in out:
            continue  # counted with the first proxy already
        scores = ProxyScorer(name, inits=settings.proxy_inits, batch_size=settings.proxy_batch, seed=0,
                             threads=threads).evaluate(config)
        out[name] = scores.score
        out["params"], out["flops"] = float(scores.params), float(scores.flops)
    return out


def correlations(scores: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """One row per score (the proxies and the one-epoch baseline) against the mean test accuracy."""
    y = scores["accuracy_mean"].to_numpy()
    rows = []
    for name in [*list_proxies(), ONE_EPOCH]:
        values = scores[name].to_numpy(dtype=float)
        rows.append({"score": name, "training_free": name != ONE_EPOCH,
                     "degenerate": int((~np.isfinite(values)).sum()),
                     **rank_correlations(values, y, n_boot=n_boot, seed=seed)})
    return pd.DataFrame(rows).sort_values("spearman", ascending=False).reset_index(drop=True)


# --- the run -----------------------------------------------------------------------------------------------------


def validate_proxy(settings: ValidationSettings = ValidationSettings(), space: SearchSpace | None = None,
                   out_dir: str | Path = VALIDATION_DIR) -> dict[str, Any]:
    settings.validate()
    space = space or SearchSpace.default()
    space.validate(settings.image_size)
    out_dir = Path(out_dir)
    dataset = load_data(settings.data)
    protocol = ValidationProtocol(dataset, settings.training)
    identity = settings.identity(space, dataset.digest)
    acc, scores, wall_before = _load_previous(out_dir, identity)
    start = time.perf_counter()
    configs = sample_configs(space, settings.archs, settings.sample_seed, settings.image_size)
    acc_rows = acc.to_dict(orient="records")
    score_rows = scores.to_dict(orient="records")
    done = {(int(r["arch"]), int(r["seed"])) for r in acc_rows}
    scored = {int(r["arch"]) for r in score_rows}
    threads = settings.training.threads
    total = len(configs) * len(settings.seeds)
    summary: dict[str, Any] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [((i, seed), config, seed) for i, config in enumerate(configs) if i not in scored
            for seed in settings.seeds if (i, seed) not in done]
    pool = TrainingPool(protocol, settings.data, settings.workers)

    def score(i: int) -> None:
        """The architecture's proxies (computed here, while the workers train the next ones) and its row."""
        nonlocal summary
        config = configs[i]
        t0 = time.perf_counter()
        proxies = proxy_scores(config, settings, threads)
        proxy_s = time.perf_counter() - t0
        mine = [row for row in acc_rows if int(row["arch"]) == i]
        first = next(row for row in mine if int(row["seed"]) == settings.seeds[0])
        accs = [float(row["accuracy"]) for row in mine]
        score_rows.append({"arch": i, **proxies, ONE_EPOCH: float(first[ONE_EPOCH]),
                           "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs, ddof=1)),
                           "proxy_s": proxy_s, "architecture": config.describe_short(),
                           "config": config.to_json(), "trained_config": protocol.adapt(config).to_json()})
        scored.add(i)
        summary = _write(out_dir, settings, identity, dataset.describe(), protocol.describe(),
                         pd.DataFrame(acc_rows), pd.DataFrame(score_rows),
                         wall_before + time.perf_counter() - start, final=len(scored) == len(configs))

    def trained(i: int) -> bool:
        return all((i, seed) in done for seed in settings.seeds)

    with training_progress("validate-proxy: trainings", total, len(done & _all_pairs(configs, settings)),
                           enabled=settings.progress) as advance:
        for i in [i for i in range(len(configs)) if i not in scored and trained(i)]:
            score(i)  # trained before an interruption, not yet scored
        for (i, seed), r in pool.run(jobs):
            acc_rows.append({"arch": i, "seed": seed, "accuracy": r.test_accuracy, ONE_EPOCH: r.one_epoch,
                             "val_curve": json.dumps(r.val_curve), "final_loss": r.final_loss,
                             "train_s": r.train_s})
            done.add((i, seed))
            advance(f"architecture {i + 1}/{len(configs)}, seed {seed}: test accuracy {r.test_accuracy:.3f}")
            if trained(i):
                score(i)
            else:  # keep the finished training: a resume starts from the rows on disk
                _write_rows(out_dir, identity, pd.DataFrame(acc_rows), pd.DataFrame(score_rows),
                            wall_before + time.perf_counter() - start)
    if not summary:  # everything was already there: the report again, from the stored rows
        summary = _write(out_dir, settings, identity, dataset.describe(), protocol.describe(), pd.DataFrame(acc_rows),
                         pd.DataFrame(score_rows), wall_before + time.perf_counter() - start, final=True)
    return summary


def _all_pairs(configs: list[NetworkConfig], settings: ValidationSettings) -> set[tuple[int, int]]:
    return {(i, s) for i in range(len(configs)) for s in settings.seeds}


def _write_rows(out_dir: Path, identity: dict[str, Any], acc: pd.DataFrame, scores: pd.DataFrame,
                wall_s: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What a resume reads, each file atomically, the settings they belong to last."""
    acc = acc.sort_values(["arch", "seed"]).reset_index(drop=True)
    scores = scores.sort_values("arch").reset_index(drop=True) if len(scores) else pd.DataFrame({"arch": []})
    write_table(acc, out_dir / "accuracies.csv")
    write_table(scores, out_dir / "scores.csv")
    write_json(out_dir / "run.json", {"identity": identity, "wall_s": wall_s})
    return acc, scores


def _write(out_dir: Path, settings: ValidationSettings, identity: dict[str, Any], data: str, fidelity: str,
           acc: pd.DataFrame, scores: pd.DataFrame, wall_s: float, *, final: bool) -> dict[str, Any]:
    """Everything so far, atomically: the rows first (what a resume reads), then the statistics and the report.
    Intermediate reports use a tenth of the bootstrap resamples (they are rewritten after every architecture)."""
    acc, scores = _write_rows(out_dir, identity, acc, scores, wall_s)
    if len(scores) < 3:
        return {}
    n_boot = settings.bootstrap if final else max(50, settings.bootstrap // 10)
    corr = correlations(scores, n_boot, settings.sample_seed)
    ceiling = noise_ceiling(acc[acc["arch"].isin(scores["arch"])], list(settings.seeds), n_boot=n_boot,
                            seed=settings.sample_seed)
    env = bench.environment("cpu", settings.training.threads)
    summary = {
        "complete": final, "archs_done": len(scores), "archs": settings.archs, "bootstrap": n_boot,
        "settings": {**{k: v for k, v in asdict(settings).items() if k != "training"}, "seeds": list(settings.seeds),
                     "training": asdict(settings.training)},
        "data": data, "fidelity": fidelity, "environment": env, "machine": bench.machine_summary(env),
        "wall_s": wall_s, "training_s": float(acc["train_s"].sum()), "proxy_s": float(scores["proxy_s"].sum()),
        "accuracy": {"mean": float(acc["accuracy"].mean()), "min": float(scores["accuracy_mean"].min()),
                     "max": float(scores["accuracy_mean"].max())},
        "correlations": corr.to_dict(orient="records"), "noise_ceiling": ceiling,
        "ceiling_reaches_target": bool(ceiling["spearman"] >= CEILING_TARGET), "ceiling_target": CEILING_TARGET,
        "supported": supported_objective(corr), "default_objective": DEFAULT_OBJECTIVE,
        "files": {"report": str(out_dir / "report.md")},
    }
    write_table(corr, out_dir / "correlations.csv")
    write_json(out_dir / "report.json", summary)
    plot_scores(scores, corr, out_dir / "scores_vs_accuracy.png")
    write_text(out_dir / "report.md", markdown(summary))
    return summary


# --- command line ------------------------------------------------------------------------------------------------


def parser(prog: str = "python -m search validate-proxy") -> argparse.ArgumentParser:
    d, t = ValidationSettings(), VALIDATION_TRAINING
    p = Parser(prog=prog, description="train a sample of the search space on real data; rank-correlate every "
                                      "score with the test accuracy")
    p.add_argument("--data", default=d.data, metavar="SPEC",
                   help="fashion-mnist, an .npz with x_train, y_train, x_test, y_test, or a folder of class subfolders")
    p.add_argument("--archs", type=positive_int, default=d.archs, help="architectures to train (>= 40 for the table)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="training seeds (>= 2)")
    g = p.add_argument_group("fidelity (search.scoring.training.TrainingSettings; defaults sized by the pilot)")
    g.add_argument("--epochs", type=positive_int, default=t.epochs, help="epochs per training (>= 2)")
    g.add_argument("--train-images", type=non_negative_int, default=t.train_images, metavar="N",
                   help="training subset, 0 for all")
    g.add_argument("--val-images", type=positive_int, default=t.val_images, metavar="N",
                   help="held out of the training set for the one-epoch score")
    g.add_argument("--batch-size", type=positive_int, default=t.batch_size)
    g.add_argument("--lr", type=positive_float, default=t.lr)
    g.add_argument("--width-div", type=positive_int, default=t.width_div, help="train at 1/N of the widths")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads per training (default: torch's; with --workers, the cores shared out)")
    g.add_argument("--workers", type=positive_int, default=d.workers,
                   help="trainings run at once, each in its own process (the accuracies do not change)")
    g = p.add_argument_group("sample and scores")
    g.add_argument("--image-size", type=positive_int, default=d.image_size,
                   help="deployment image size: where architectures are sampled and proxies computed")
    g.add_argument("--sample-seed", type=int, default=d.sample_seed)
    g.add_argument("--proxy-inits", type=positive_int, default=d.proxy_inits)
    g.add_argument("--proxy-batch", type=positive_int, default=d.proxy_batch)
    g.add_argument("--bootstrap", type=positive_int, default=d.bootstrap, help="bootstrap resamples")
    g.add_argument("--space", type=Path, default=None, metavar="FILE")
    p.add_argument("--out-dir", type=writable_dir, default=VALIDATION_DIR)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    tool = "search validate-proxy"
    try:
        training = TrainingSettings(epochs=args.epochs, train_images=args.train_images or None,
                                    val_images=args.val_images, batch_size=args.batch_size, lr=args.lr,
                                    width_div=args.width_div, threads=args.threads)
        settings = ValidationSettings(data=args.data, archs=args.archs, seeds=tuple(args.seeds), training=training,
                                      image_size=args.image_size, sample_seed=args.sample_seed,
                                      bootstrap=args.bootstrap, proxy_inits=args.proxy_inits,
                                      proxy_batch=args.proxy_batch, workers=args.workers,
                                      progress=not args.no_progress)
        space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
        summary = validate_proxy(settings, space, args.out_dir)
    except (SearchInputError, bench.BenchInputError) as e:
        return fail(tool, str(e))
    except KeyboardInterrupt:
        return fail(tool, f"interrupted; rerun the same command to resume from {args.out_dir}", 130)
    print(table(summary))
    print(f"{summary['supported']['sentence']} Noise ceiling (seed vs seed Spearman): "
          f"{summary['noise_ceiling']['spearman']:.2f}. {summary['wall_s'] / 60:.1f} min. "
          f"Report: {summary['files']['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
