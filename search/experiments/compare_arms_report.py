"""`python -m search compare`'s report: per budget each arm's winners and the paired differences; the plot of
accuracy against re-measured latency (every arm's winners, the scaled family's members and front, the search's
Pareto front)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.formatting import markdown_table
from bench.kit import save_figure, write_text

from search.report import pareto_mask

COLORS = {"search": "tab:blue", "random": "tab:orange", "scaled": "tab:green"}


def _fmt(value: Any, spec: str) -> str:
    return "" if value is None or pd.isna(value) else format(value, spec)


def _interval(b: dict[str, float], sign: str = "") -> str:
    if not b["n"]:
        return "(none)"
    return f"{b['mean']:{sign}.4f} [{b['lo']:{sign}.4f}, {b['hi']:{sign}.4f}]"


def table(summary: dict[str, Any]) -> str:
    """Per budget: each arm's mean test accuracy and the paired differences, with 95% intervals."""
    rows = []
    for b in summary["per_budget"]:
        for arm, m in b["per_arm"].items():
            rows.append({"budget (ms)": f"{b['budget_ms']:g}", "": f"{arm} winners' test accuracy",
                         "mean [95% CI]": _interval(m), "seeds": str(m["n"])})
        for name, d in b["differences"].items():
            rows.append({"budget (ms)": f"{b['budget_ms']:g}", "": f"paired difference {name}",
                         "mean [95% CI]": _interval(d, "+"), "seeds": str(d["n"])})
    return markdown_table(pd.DataFrame(rows), align="rlrr")


def sentence(name: str, d: dict[str, float], budget: float) -> str:
    if not d["n"]:
        return f"At {budget:g} ms, no seed gave both arms of {name} a winner."
    pts = f"{100 * d['mean']:+.2f} points [{100 * d['lo']:+.2f}, {100 * d['hi']:+.2f}] over {d['n']} seeds"
    a, b = name.split(" - ")
    if d["lo"] > 0:
        return f"At {budget:g} ms, {a} beats {b}: {pts}."
    if d["hi"] < 0:
        return f"At {budget:g} ms, {b} beats {a}: {pts}."
    return f"At {budget:g} ms, {a} is not shown to beat {b}: {pts}, an interval that includes zero."


def markdown(summary: dict[str, Any]) -> str:
    s, dep, t, env = summary, summary["deployment"], summary["training"], summary["environment"]
    w = pd.DataFrame(s["winners"])
    runs = pd.DataFrame({
        "budget (ms)": w["budget_ms"].map(lambda v: f"{v:g}"), "arm": w["arm"], "seed": w["seed"],
        "winner": w["winner"].fillna("(none feasible)"),
        "search latency (ms)": w["search_latency_ms"].map(lambda v: _fmt(v, ".2f")),
        "re-measured (ms)": w["latency_ms"].map(lambda v: _fmt(v, ".2f")),
        s["objective"]: w["score"].map(lambda v: _fmt(v, ".4g")),
        "test accuracy": w["accuracy"].map(lambda v: _fmt(v, ".4f"))})
    over = s["over_budget"]
    over_lines = ([f"- {o['arm']}, seed {o['seed']}, at {o['budget_ms']:g} ms: {o['winner']} re-measured at "
                   f"{o['latency_ms']:.2f} ms" for o in over] if over else ["- none: every winner fits its budget"])
    lines = [
        "# The search against random search and a scaled Container-Light", "",
        f"- machine: {s['machine']}, torch {env['torch_version']}; {env['timestamp_utc']}, commit {env['git_commit']}",
        f"- wall time: {s['wall_s'] / 60:.1f} min",
        f"- setting: budgets {', '.join(f'{b:g}' for b in s['budgets'])} ms at {dep['device']}, batch "
        f"{dep['batch_size']}, {dep['image_size']}px, {dep['dtype']}, runtime {dep['runtime']}, threads "
        f"{dep['threads']}; {s['trials']} trials per study; objective `{s['objective']}`; seeds "
        f"{', '.join(map(str, s['seeds']))}; arms {', '.join(s['arms'])}",
        "- arms: `search` is `python -m search` as shipped (TPE started from the scaled family"
        + {True: ", behind the latency predictor gate", False: ", without the latency predictor gate",
           None: ""}[s.get("search_predictor")] + "; its winner the most "
        "accurate of its finalists, trained on the same data at the same fidelity, validation split"
        + (f", {s['finalist_seeds']} training seeds each" if s.get("finalist_seeds", 1) > 1 else "")
        + (f", the scaled start kept unless beaten by more than {s['finalist_margin']:g}"
           if s.get("finalist_margin") else "") + "; "
        "search.finalists); `random` uniform random search (`--sampler random`), its winner the best feasible "
        "architecture by the objective after the re-check; `scaled` "
        f"Container-Light scaled by width and depth multipliers ({len(s['family'])} members), the best member by the "
        "objective whose latency fits within the search's re-check headroom (budget - 5%; the same for every seed)",
        f"- re-measured: every winner at a budget in {s['remeasure_rounds']} rounds (one BenchLatency measurement "
        "each, seeded shuffled order), median of the search's deciding (normalised) latency",
        f"- winners trained with validate-proxy's protocol: {t['epochs']} epochs on {t['train_images'] or 'all'} "
        f"training images, width / {t['width_div']}, training seeds {', '.join(map(str, s['train_seeds']))}; "
        f"test-split accuracy, mean over training seeds; intervals: percentile bootstrap over seeds "
        f"({s['bootstrap']} resamples)", "",
        table(s), "",
        *[f"**{sentence(name, d, b['budget_ms'])}**  " for b in s["per_budget"]
          for name, d in b["differences"].items()],
        "", "## Winners over budget when re-measured", "", *over_lines, "",
        "## Every winner", "", markdown_table(runs, align="rlrlrrrr"), "",
        *(["## The scaled family", "",
           "Every member, trained with the same protocol; latency as the search measured it (normalised).", "",
           family_table(s), ""] if len(_family(s)) else []),
        "![test accuracy against re-measured latency](accuracy_latency.png)", "",
        "Files: `winners.csv`, `trainings.csv` (every training), `remeasured.json`, `report.json`, `studies/`.",
    ]
    return "\n".join(lines) + "\n"


def _family(summary: dict[str, Any]) -> pd.DataFrame:
    """The scaled family's trained members (width, depth, winner, latency_ms, accuracy); empty when none was."""
    family = pd.DataFrame(summary.get("family") or [])
    if not len(family) or not {"latency_ms", "accuracy"} <= set(family):
        return pd.DataFrame(columns=["width", "depth", "winner", "latency_ms", "accuracy"])
    return family.dropna(subset=["latency_ms", "accuracy"]).sort_values("latency_ms")


def family_table(summary: dict[str, Any]) -> str:
    family = _family(summary)
    rows = pd.DataFrame({"width": family["width"].map(lambda v: f"x{v:g}"),
                         "depth": family["depth"].map(lambda v: f"x{v:g}"), "network": family["winner"],
                         "latency (ms)": family["latency_ms"].map(lambda v: f"{v:.2f}"),
                         "test accuracy": family["accuracy"].map(lambda v: f"{v:.4f}")})
    return markdown_table(rows, align="rrlrr")


def plot_accuracy_latency(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = pd.DataFrame(summary["winners"])
    w = w[w["accuracy"].notna() & w["latency_ms"].notna()]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for arm in summary["arms"]:
        a = w[w["arm"] == arm]
        ax.scatter(a["latency_ms"], a["accuracy"], s=18, alpha=0.7, color=COLORS[arm], label=f"{arm} winners")
    family = _family(summary)
    if len(family):
        ax.scatter(family["latency_ms"], family["accuracy"], s=22, facecolors="none", edgecolors=COLORS["scaled"],
                   lw=0.8, label="scaled family (every member)")
        front = family[pareto_mask(family["accuracy"].to_numpy(float), family["latency_ms"].to_numpy(float))]
        front = front.sort_values("latency_ms")
        ax.step(front["latency_ms"], front["accuracy"], where="post", color=COLORS["scaled"], lw=1.0,
                label="scaled family's front")
    found = w[w["arm"] == "search"]
    if len(found):
        mask = pareto_mask(found["accuracy"].to_numpy(float), found["latency_ms"].to_numpy(float))
        front = found[mask].sort_values("latency_ms")
        ax.step(front["latency_ms"], front["accuracy"], where="post", color=COLORS["search"], lw=1.2,
                label="search's Pareto front")
    for budget in summary["budgets"]:
        ax.axvline(budget, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("re-measured latency (ms, normalised)")
    ax.set_ylabel("test accuracy (mean over training seeds)")
    ax.set_title("winners per arm; dotted: budgets", fontsize=9)
    if np.isfinite(w["latency_ms"].to_numpy(float)).any():
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(summary: dict[str, Any], out: Path) -> None:
    plot_accuracy_latency(summary, out / "accuracy_latency.png")
    write_text(out / "report.md", markdown(summary))


__all__ = ["family_table", "markdown", "plot_accuracy_latency", "sentence", "table", "write_report"]
