"""validate-proxy's report: the correlation table (also what the README shows), the markdown and the plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.formatting import markdown_table
from bench.kit import save_figure

from search.experiments.evidence import finite_ranks

LABELS = {"one_epoch": "accuracy after 1 epoch (seed 0, validation split)"}


def _interval(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.2f} [{r[key + '_lo']:.2f}, {r[key + '_hi']:.2f}]"


def table(summary: dict[str, Any]) -> str:
    """Every score's Spearman and Kendall against the mean test accuracy, and the noise ceiling."""
    default = summary["default_objective"]
    rows = []
    for r in summary["correlations"]:
        name = LABELS.get(r["score"], f"`{r['score']}`" + (" (the search's default)" if r["score"] == default else ""))
        rows.append({"score": name, "Spearman rho [95% CI]": _interval(r, "spearman"),
                     "Kendall tau [95% CI]": _interval(r, "kendall")})
    c = summary["noise_ceiling"]
    rows.append({"score": "noise ceiling: seed vs seed accuracy", "Spearman rho [95% CI]": _interval(c, "spearman"),
                 "Kendall tau [95% CI]": _interval(c, "kendall")})
    return markdown_table(pd.DataFrame(rows), align="lll")


def markdown(s: dict[str, Any]) -> str:
    st, env, c = s["settings"], s["environment"], s["noise_ceiling"]
    status = ("" if s["complete"] else
              f"**Partial: {s['archs_done']} of {s['archs']} architectures so far (intervals from {s['bootstrap']} "
              f"resamples); rerun the same command to resume.**\n\n")
    reaches = "reaches" if s["ceiling_reaches_target"] else "does NOT reach"
    lines = [
        "# Does the search's score track accuracy?", "", *([status.rstrip("\n"), ""] if status else []),
        f"- machine: {s['machine']}; threads: {env['threads']}; torch {env['torch_version']}; {env['timestamp_utc']}, "
        f"commit {env['git_commit']}",
        f"- wall time: {s['wall_s'] / 60:.1f} min ({s['training_s'] / 60:.1f} min training, {s['proxy_s'] / 60:.1f} "
        f"min scores)",
        f"- data: {s['data']}",
        f"- architectures: {s['archs_done']} drawn uniformly from the search space (seed {st['sample_seed']}); "
        f"proxies computed on the deployed network ({st['image_size']}px) as the search computes them "
        f"({st['proxy_inits']} initialisations, batch {st['proxy_batch']})",
        f"- fidelity: {s['fidelity']}; seeds {', '.join(map(str, st['seeds']))}; each architecture adapted to the "
        f"data by search.scoring.training's rule",
        f"- measured accuracy: test split after the last epoch, mean over seeds: {s['accuracy']['mean']:.3f} on "
        f"average, per architecture {s['accuracy']['min']:.3f} to {s['accuracy']['max']:.3f}",
        f"- intervals: percentile bootstrap over architectures, {s['bootstrap']} resamples",
        "", table(s), "",
        f"Noise ceiling: one training seed ranks the architectures like another with Spearman rho "
        f"{c['spearman']:.2f} [{c['spearman_lo']:.2f}, {c['spearman_hi']:.2f}], which {reaches} the "
        f"{s['ceiling_target']:g} this protocol aims for; stepped up to the mean of {len(st['seeds'])} seeds "
        f"(Spearman-Brown) {c['spearman_brown']:.2f}. Mean seed-to-seed standard deviation of an architecture's "
        f"accuracy: {c['seed_std_mean']:.4f}.", "",
        f"**Objective the evidence supports: `{s['supported']['objective']}`.** {s['supported']['sentence']} "
        f"(The search's default objective is `{s['default_objective']}`.)", "",
        "![every score against the mean test accuracy](scores_vs_accuracy.png)", "",
        "Files: `accuracies.csv` (architecture x seed), `scores.csv` (scores, mean accuracy, configs), "
        "`correlations.csv`, `report.json`, `run.json`. Reproduce or resume: `python -m search validate-proxy` with "
        "the settings above.",
    ]
    return "\n".join(lines) + "\n"


def plot_scores(scores: pd.DataFrame, corr: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(corr["score"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.1), squeeze=False)
    by_name = corr.set_index("score")
    for ax, name in zip(axes[0], names):
        x = finite_ranks(scores[name].to_numpy(dtype=float))
        if name in ("params", "flops"):
            ax.set_xscale("log")
        ax.errorbar(x, scores["accuracy_mean"], yerr=scores["accuracy_std"], fmt="o", ms=3, lw=0.8)
        ax.set_title(f"{name}: rho {float(by_name.loc[name, 'spearman']):.2f}", fontsize=9)
        ax.set_xlabel(name)
    axes[0][0].set_ylabel("test accuracy (mean over seeds)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


__all__ = ["markdown", "plot_scores", "table"]
