"""compare-random's report: the per-seed winners, each sampler's mean accuracy and the paired difference, a plot."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.formatting import markdown_table
from bench.kit import save_figure


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def table(summary: dict[str, Any]) -> str:
    """Mean test accuracy of each sampler's winners and the paired difference (also what the README shows)."""
    rows = [{"": f"{name} winners' test accuracy", "mean [95% CI]":
             f"{b['mean']:.4f} [{b['lo']:.4f}, {b['hi']:.4f}]", "seeds": str(b["n"])}
            for name, b in summary["per_sampler"].items()]
    d = summary["difference"]
    rows.append({"": "paired difference TPE - random", "mean [95% CI]": f"{d['mean']:+.4f} [{d['lo']:+.4f}, "
                 f"{d['hi']:+.4f}]", "seeds": str(d["n"])})
    return markdown_table(pd.DataFrame(rows), align="lrr")


def markdown(summary: dict[str, Any], frame: pd.DataFrame) -> str:
    s, dep, t, env = summary, summary["deployment"], summary["training"], summary["environment"]
    runs = pd.DataFrame({
        "seed": frame["seed"], "sampler": frame["sampler"], "winner": frame["winner"].fillna("(none feasible)"),
        "latency (ms)": [_fmt(v, ".2f") for v in frame.get("latency_ms", [None] * len(frame))],
        f"{s['objective']}": [_fmt(v, ".4g") for v in frame.get("score", [None] * len(frame))],
        "test accuracy": [_fmt(v, ".4f") for v in frame["accuracy"]]})
    lines = [
        "# The search against random search", "",
        f"- machine: {s['machine']}, torch {env['torch_version']}; {env['timestamp_utc']}, commit {env['git_commit']}",
        f"- wall time: {s['wall_s'] / 60:.1f} min",
        f"- setting: budget {s['budget_ms']:g} ms at {dep['device']}, batch {dep['batch_size']}, "
        f"{dep['image_size']}px, {dep['dtype']}, runtime {dep['runtime']}, threads {dep['threads']}; "
        f"{s['trials']} trials per study; "
        f"objective `{s['objective']}`; seeds {', '.join(map(str, s['seeds']))}",
        "- each study's winner: its best feasible architecture after the re-check (best.json); both samplers' "
        "latencies from one shared cache",
        f"- winners trained with validate-proxy's protocol: {t['epochs']} epochs on {t['train_images'] or 'all'} "
        f"training images, width / {t['width_div']}, training seeds {', '.join(map(str, s['train_seeds']))}; "
        f"test-split accuracy, mean over training seeds; intervals: percentile bootstrap over seeds "
        f"({s['bootstrap']} resamples)",
        "", table(s), "", f"**{s['sentence']}**", "", "## Every seed's winners", "",
        markdown_table(runs, align="rllrrr"), "", "![winners' test accuracy per seed](accuracy.png)", "",
        "Files: `runs.csv` (winners with configs), `trainings.csv` (every training), `report.json`, `studies/`.",
    ]
    return "\n".join(lines) + "\n"


def plot_accuracy(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wide = frame.pivot(index="seed", columns="sampler", values="accuracy")
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for seed, r in wide.iterrows():
        ax.plot([0, 1], [r.get("random"), r.get("tpe")], "-o", color="grey", alpha=0.6, ms=4)
        ax.annotate(str(seed), (1.03, r.get("tpe")), fontsize=7)
    ax.set_xticks([0, 1], ["random search", "search (TPE)"])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel("winner's test accuracy")
    ax.set_title("winners per seed (lines pair one seed)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


__all__ = ["markdown", "plot_accuracy", "table"]
