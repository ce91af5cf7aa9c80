"""`python -m search validate-proxy`: an honest check that the search's score tracks accuracy.

Training-free proxies are known to fail in some spaces and often do no better than the parameter
count (Ning et al., "Evaluating Efficient Performance Estimators of Neural Architectures", NeurIPS
2021; White et al., "A Deeper Look at Zero-Cost Proxies", 2022). So this command trains a seeded
sample of architectures from the search space on a small real data set and measures how well each
score ranks them:

* data: scikit-learn's bundled 8x8 digits (1797 images, 10 classes; `sklearn.datasets.load_digits`
  reads a file inside the package, nothing is downloaded), upsampled to 32x32, one channel,
  a fixed stratified 75/25 train/test split;
* architectures: `--archs` networks drawn uniformly from the search space (the default space unless
  `--space`), scaled down to the data: every stage keeps its depth, kind, kernel size, MLP ratio and
  number of heads; widths are divided by `--width-div` (so head_dim 16/32 becomes 4/8) and every
  patch embedding has stride 2 (32 -> 16 -> 8 -> 4 -> 2 tokens per side; the default space's
  4/2/2/2 would leave one token in the last stage at this input);
* training: AdamW, cosine schedule, `--epochs` epochs, batch 64, at least two seeds per architecture;
  the test accuracy after the last epoch is the measured accuracy (no early stopping on the test set);
* scores: every registered proxy (`synflow`, `naswot`, `params`, `flops`), computed on the same scaled
  networks exactly as the search computes them (search.ProxyScorer, same inits and batch);
* statistics: Spearman's rho and Kendall's tau of each score against the mean accuracy over seeds,
  with percentile bootstrap 95% intervals over architectures (seeded); the seed-to-seed noise ceiling
  (rank correlation of seed 0's accuracies with seed 1's, and its Spearman-Brown step-up to the mean
  of the seeds); a plain warning when the search's default proxy does not beat #params.

Writes results/proxy_validation/report.md, accuracies.csv (one row per architecture and seed),
scores.csv (one row per architecture), correlations.csv and report.json.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import bench
import container
from bench.cli_kit import Parser, positive_float, positive_int, writable_dir
from bench.formatting import markdown_table
from bench.io import save_figure, write_json, write_table, write_text
from bench.timing import intra_op_threads
from container import NetworkConfig, StageConfig

from search.proxies import PROXIES, ProxyScorer, list_proxies
from search.sampling import sample_configs
from search.settings import DEFAULT_OBJECTIVE, VALIDATION_DIR
from search.space import SearchInputError, SearchSpace

OUT_DIR = VALIDATION_DIR
SAMPLE_SEED = 3000


@dataclass(frozen=True)
class ValidationSettings:
    archs: int = 30
    seeds: tuple[int, ...] = (0, 1)
    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.05
    image_size: int = 32
    width_div: int = 4
    sample_seed: int = SAMPLE_SEED
    threads: int | None = None
    bootstrap: int = 2000
    proxy_inits: int = 3
    proxy_batch: int = 8
    default_objective: str | None = None  # None: the search's DEFAULT_OBJECTIVE

    def validate(self) -> None:
        if self.archs < 3:
            raise SearchInputError(f"--archs {self.archs}: must be >= 3 (30 or more for the published table)")
        if len(self.seeds) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise SearchInputError(f"--seeds {list(self.seeds)}: need at least two distinct training seeds")
        for name in ("epochs", "batch_size", "image_size", "width_div", "bootstrap", "proxy_inits", "proxy_batch"):
            if getattr(self, name) < 1:
                raise SearchInputError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 1")


# --- data ------------------------------------------------------------------------------------------------


def digits(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): scikit-learn's bundled digits, 1 x image_size x image_size,
    standardised with the training set's mean and standard deviation; a fixed stratified 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()  # a file inside the scikit-learn package: nothing is downloaded
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=data.target, random_state=0)
    x_train, x_test = x[idx_train], x[idx_test]
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, y[idx_train], (x_test - mean) / std, y[idx_test]


# --- architectures ------------------------------------------------------------------------------------------


def scale_config(config: NetworkConfig, *, width_div: int = 4, image_size: int = 32, in_chans: int = 1,
                 num_classes: int = 10) -> NetworkConfig:
    """The same architecture at the data's scale: depth, kind, kernel, MLP ratio and heads kept; widths
    divided by `width_div` (so head_dim is too); every patch embedding at stride 2."""
    stages = []
    n = len(config.stages)
    if image_size % (2 ** n) or image_size // (2 ** n) < 1:
        raise SearchInputError(f"--image-size {image_size}: must be divisible by 2^{n} (one stride-2 embedding "
                               f"per stage)")
    for s in config.stages:
        dim = max(1, s.dim // width_div)
        heads = math.gcd(s.heads, dim)  # == s.heads whenever width_div divides head_dim
        stages.append(StageConfig(depth=s.depth, dim=dim, heads=heads, kind=s.kind, kernel_size=s.kernel_size,
                                  mlp_ratio=s.mlp_ratio, patch_size=2))
    return NetworkConfig(stages=tuple(stages), image_size=image_size, in_chans=in_chans, num_classes=num_classes,
                         mixing=config.mixing)


# --- training -----------------------------------------------------------------------------------------------


def train_and_test(config: NetworkConfig, seed: int, data: tuple[torch.Tensor, ...], *, epochs: int,
                   batch_size: int, lr: float, weight_decay: float) -> dict[str, float]:
    """Train from a seeded initialisation with a seeded data order; test accuracy after the last epoch."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = container.build(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / batch_size)
    total = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / steps_per_epoch) * 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            if len(batch) < 2:  # BatchNorm needs two samples
                continue
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
    train_s = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        correct = sum(int((model(x_test[i:i + 256]).argmax(1) == y_test[i:i + 256]).sum())
                      for i in range(0, len(y_test), 256))
    return {"accuracy": correct / len(y_test), "final_loss": float(loss.detach()), "train_s": train_s}


def proxy_scores(config: NetworkConfig, settings: ValidationSettings) -> dict[str, float]:
    """Every registered proxy on this network, as the search computes it (seed 0)."""
    out: dict[str, float] = {}
    for name in list_proxies():
        scorer = ProxyScorer(name, inits=settings.proxy_inits, batch_size=settings.proxy_batch, seed=0,
                             threads=settings.threads)
        scores = scorer.evaluate(config)
        out[name] = scores.score
        out["params_count"], out["flops_count"] = scores.params, scores.flops
    return out


# --- statistics ---------------------------------------------------------------------------------------------


def _finite(values: np.ndarray) -> np.ndarray:
    """-inf (a degenerate score) ranks below every finite one."""
    v = np.asarray(values, dtype=float).copy()
    bad = ~np.isfinite(v)
    if bad.any():
        floor = np.nanmin(v[~bad]) if (~bad).any() else 0.0
        v[bad] = floor - 1.0
    return v


def rank_correlations(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> dict[str, float]:
    """Spearman's rho and Kendall's tau with percentile bootstrap 95% intervals (architectures resampled)."""
    from scipy.stats import kendalltau, spearmanr

    x, y = _finite(x), np.asarray(y, dtype=float)
    rho, tau = spearmanr(x, y).statistic, kendalltau(x, y).statistic
    rng = np.random.default_rng(seed)
    boots_rho, boots_tau = [], []
    n = len(x)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        xs, ys = x[idx], y[idx]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            continue
        boots_rho.append(spearmanr(xs, ys).statistic)
        boots_tau.append(kendalltau(xs, ys).statistic)
    lo_r, hi_r = np.nanpercentile(boots_rho, [2.5, 97.5]) if boots_rho else (math.nan, math.nan)
    lo_t, hi_t = np.nanpercentile(boots_tau, [2.5, 97.5]) if boots_tau else (math.nan, math.nan)
    return {"spearman": float(rho), "spearman_lo": float(lo_r), "spearman_hi": float(hi_r),
            "kendall": float(tau), "kendall_lo": float(lo_t), "kendall_hi": float(hi_t)}


def noise_ceiling(acc: pd.DataFrame, seeds: Sequence[int], *, n_boot: int, seed: int) -> dict[str, float]:
    """How well one training seed's accuracies rank the architectures like another seed's: the most
    any score could be expected to reach (averaged over seed pairs), and the Spearman-Brown step-up
    to the mean over all seeds."""
    wide = acc.pivot(index="arch", columns="seed", values="accuracy")
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1:]]
    results = [rank_correlations(wide[a].to_numpy(), wide[b].to_numpy(), n_boot=n_boot, seed=seed) for a, b in pairs]
    out = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    k = len(seeds)
    r = out["spearman"]
    out["spearman_brown"] = float(k * r / (1 + (k - 1) * r)) if r > -1 / (k - 1) else math.nan
    out["seed_std_mean"] = float(acc.groupby("arch")["accuracy"].std().mean())
    return out


# --- the run ------------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"search: {message}", file=sys.stderr, flush=True)


def validate_proxy(settings: ValidationSettings = ValidationSettings(), space: SearchSpace | None = None,
                   out_dir: str | Path = OUT_DIR) -> dict[str, Any]:
    settings.validate()
    default = settings.default_objective or DEFAULT_OBJECTIVE
    space = space or SearchSpace.default()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    full = sample_configs(space, settings.archs, settings.sample_seed, 224 if 224 % space.total_stride == 0
                          else space.total_stride)
    scaled = [scale_config(c, width_div=settings.width_div, image_size=settings.image_size) for c in full]
    data = digits(settings.image_size)
    acc_rows, score_rows = [], []
    with intra_op_threads(settings.threads):
        threads = torch.get_num_threads()
        for i, config in enumerate(scaled):
            t0 = time.perf_counter()
            scores = proxy_scores(config, settings)
            proxy_s = time.perf_counter() - t0
            for seed in settings.seeds:
                r = train_and_test(config, seed, data, epochs=settings.epochs, batch_size=settings.batch_size,
                                   lr=settings.lr, weight_decay=settings.weight_decay)
                acc_rows.append({"arch": i, "seed": seed, **r})
            accs = [r["accuracy"] for r in acc_rows if r["arch"] == i]
            score_rows.append({"arch": i, **{name: scores[name] for name in list_proxies()},
                               "params_count": scores["params_count"], "flops_count": scores["flops_count"],
                               "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs, ddof=1)),
                               "proxy_s": proxy_s, "architecture": config.describe(),
                               "config": config.to_json(), "full_size_config": full[i].to_json()})
            elapsed = time.perf_counter() - start
            _log(f"{i + 1}/{len(scaled)}: accuracy {np.mean(accs):.3f} ({', '.join(f'{a:.3f}' for a in accs)}); "
                 f"{elapsed:.0f} s so far, ~{elapsed / (i + 1) * (len(scaled) - i - 1):.0f} s to go")
    acc = pd.DataFrame(acc_rows)
    scores = pd.DataFrame(score_rows)
    y = scores["accuracy_mean"].to_numpy()
    correlations = []
    for name in list_proxies():
        c = rank_correlations(scores[name].to_numpy(), y, n_boot=settings.bootstrap, seed=settings.sample_seed)
        correlations.append({"score": name, "degenerate": int((~np.isfinite(scores[name].to_numpy())).sum()), **c})
    corr = pd.DataFrame(correlations).sort_values("spearman", ascending=False).reset_index(drop=True)
    ceiling = noise_ceiling(acc, list(settings.seeds), n_boot=settings.bootstrap, seed=settings.sample_seed)
    by_name = corr.set_index("score")
    rho = lambda name: float(by_name.loc[name, "spearman"]) if name in by_name.index else math.nan  # noqa: E731
    best = str(corr.iloc[0]["score"])
    cautions = []
    if not rho(default) > rho("params"):
        cautions.append(f"WARNING: the default proxy `{default}` (Spearman rho {rho(default):.3f}) does not beat "
                        f"#params (rho {rho('params'):.3f}) at ranking these architectures by accuracy.")
    low = float(by_name.loc[default, "spearman_lo"]) if default in by_name.index else math.nan
    if not low > 0 or not ceiling["spearman_brown"] >= 0.5:
        # Rankings of accuracies that training noise reorders cannot tell one proxy from another.
        cautions.append(f"WARNING: weak evidence: the default proxy's 95% interval reaches {low:.2f} and the "
                        f"accuracies' own seed-to-seed reliability is {ceiling['spearman_brown']:.2f}; on this "
                        f"data no score is shown to track accuracy.")
    warning = " ".join(cautions) or None
    env = bench.environment("cpu", threads)
    summary = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
        "default_objective": default, "supported_objective": best, "warning": warning,
        "environment": env, "threads": threads, "data": {"name": "sklearn.datasets.load_digits", "train": 1347,
                                                         "test": 450, "image_size": settings.image_size},
        "accuracy": {"mean": float(acc["accuracy"].mean()), "min": float(scores["accuracy_mean"].min()),
                     "max": float(scores["accuracy_mean"].max())},
        "correlations": corr.to_dict(orient="records"), "noise_ceiling": ceiling,
        "seconds": {"total": time.perf_counter() - start, "training": float(acc["train_s"].sum()),
                    "proxies": float(scores["proxy_s"].sum())},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(acc, out_dir / "accuracies.csv")
    write_table(scores, out_dir / "scores.csv")
    write_table(corr, out_dir / "correlations.csv")
    write_json(out_dir / "report.json", summary)
    _plot(scores, corr, out_dir / "scores_vs_accuracy.png")
    write_text(out_dir / "report.md", markdown(summary))
    summary["files"] = {"report": str(out_dir / "report.md")}
    return summary


def _plot(scores: pd.DataFrame, corr: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(corr["score"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        x = _finite(scores[name].to_numpy())
        if name in ("params", "flops"):
            ax.set_xscale("log")
        ax.errorbar(x, scores["accuracy_mean"], yerr=scores["accuracy_std"], fmt="o", ms=3, lw=0.8)
        rho = float(corr.set_index("score").loc[name, "spearman"])
        ax.set_title(f"{name}: rho {rho:.2f}", fontsize=9)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("test accuracy (mean over seeds)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    """The markdown table of correlations (also what the README shows)."""
    def row(name: str, r: dict[str, Any]) -> dict[str, str]:
        return {"score": name,
                "Spearman rho [95% CI]": f"{r['spearman']:.2f} [{r['spearman_lo']:.2f}, {r['spearman_hi']:.2f}]",
                "Kendall tau [95% CI]": f"{r['kendall']:.2f} [{r['kendall_lo']:.2f}, {r['kendall_hi']:.2f}]"}

    rows = [row(f"`{r['score']}`" + (" (default)" if r["score"] == summary["default_objective"] else ""), r)
            for r in summary["correlations"]]
    rows.append(row("seed-to-seed noise ceiling (seed vs seed)", summary["noise_ceiling"]))
    return markdown_table(pd.DataFrame(rows), align="lll")


def markdown(s: dict[str, Any]) -> str:
    st, env, c = s["settings"], s["environment"], s["noise_ceiling"]
    lines = [
        "# Does the search's score track accuracy?", "",
        f"- machine: {bench.machine_summary(env)}, {s['threads']} threads, "
        f"torch {env['torch_version']}; {env['timestamp_utc']}, commit {env['git_commit']}",
        f"- data: scikit-learn's bundled 8x8 digits, upsampled to {st['image_size']}x{st['image_size']}, "
        f"{s['data']['train']} train / {s['data']['test']} test (stratified, fixed)",
        f"- architectures: {st['archs']} drawn from the search space (seed {st['sample_seed']}), scaled down: widths / "
        f"{st['width_div']}, stride-2 patch embeddings, depth, kind, kernel, MLP ratio and heads kept",
        f"- training: {st['epochs']} epochs, AdamW (lr {st['lr']:g}, weight decay {st['weight_decay']:g}), cosine, "
        f"batch {st['batch_size']}, seeds {st['seeds']}; test accuracy after the last epoch: mean "
        f"{s['accuracy']['mean']:.3f}, per architecture {s['accuracy']['min']:.3f} to {s['accuracy']['max']:.3f}",
        f"- scores computed on the same scaled networks as the search computes them ({st['proxy_inits']} "
        f"initialisations, batch {st['proxy_batch']}); intervals: percentile bootstrap over architectures, "
        f"{st['bootstrap']} resamples",
        f"- time: {s['seconds']['total'] / 60:.1f} min in all ({s['seconds']['training'] / 60:.1f} min training, "
        f"{s['seconds']['proxies']:.0f} s scores)",
        "", table(s), "",
        f"Noise ceiling: one training seed ranks the architectures like another with rho {c['spearman']:.2f}; "
        f"stepped up to the mean of {len(st['seeds'])} seeds (Spearman-Brown) {c['spearman_brown']:.2f}. Mean "
        f"seed-to-seed standard deviation of an architecture's accuracy: {c['seed_std_mean']:.3f}.", "",
        f"Best-supported objective: **`{s['supported_objective']}`**; the search's default is "
        f"`{s['default_objective']}`.", "",
    ]
    if s["warning"]:
        lines += [f"**{s['warning']}**", ""]
    lines += ["![scores against accuracy](scores_vs_accuracy.png)", "",
              "Files: `accuracies.csv` (architecture x seed), `scores.csv` (scores, mean accuracy, configs), "
              "`correlations.csv`, `report.json`. Reproduce: `python -m search validate-proxy`."]
    return "\n".join(lines) + "\n"


# --- command line ------------------------------------------------------------------------------------------


def parser(prog: str = "python -m search validate-proxy") -> argparse.ArgumentParser:
    d = ValidationSettings()
    p = Parser(prog=prog, description="train a sample of the space on digits; rank-correlate scores")
    p.add_argument("--archs", type=positive_int, default=d.archs, help="architectures to train (>= 30 for the table)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="training seeds (>= 2)")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--image-size", type=positive_int, default=d.image_size)
    p.add_argument("--width-div", type=positive_int, default=d.width_div)
    p.add_argument("--sample-seed", type=int, default=d.sample_seed)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--bootstrap", type=positive_int, default=d.bootstrap)
    p.add_argument("--default-objective", default=None,
                   help="the proxy checked against #params (default: the search's)")
    p.add_argument("--space", type=Path, default=None, metavar="FILE")
    p.add_argument("--out-dir", type=writable_dir, default=OUT_DIR)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = ValidationSettings(archs=args.archs, seeds=tuple(args.seeds), epochs=args.epochs,
                                      batch_size=args.batch_size, lr=args.lr, image_size=args.image_size,
                                      width_div=args.width_div, sample_seed=args.sample_seed, threads=args.threads,
                                      bootstrap=args.bootstrap, default_objective=args.default_objective)
        if settings.default_objective is not None and settings.default_objective not in PROXIES:
            raise SearchInputError(f"--default-objective {settings.default_objective!r}: valid: "
                                   f"{', '.join(list_proxies())}")
        space = SearchSpace.load(args.space) if args.space else SearchSpace.default()
        summary = validate_proxy(settings, space, args.out_dir)
    except (SearchInputError, bench.BenchInputError) as e:
        print(f"search: error: {e}", file=sys.stderr)
        return 2
    print(table(summary))
    print(f"best-supported objective: {summary['supported_objective']} (default: {summary['default_objective']}); "
          f"{summary['seconds']['total'] / 60:.1f} min. Report: {summary['files']['report']}")
    if summary["warning"]:
        print(summary["warning"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
