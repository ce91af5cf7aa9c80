"""`python -m bench ops`: profile each (target, batch, runtime) op by op and write what was found.

DIR/ops.csv      every row of every profile (torch, aot: an op or kernel at its input shapes; openvino,
                 onnxruntime: a node)
DIR/categories.csv  bench.ops.profile.compare: ms per call by category, one column per runtime
DIR/gaps.csv     bench.ops.profile.native_gaps: where the torch-native runtime loses to the best deployed one
DIR/report.md    per target and batch: the category table, then each runtime's top ops
DIR/ops.png      per target and batch: a bar per runtime, stacked by category
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.env import environment, machine_summary
from bench.formatting import fixed, markdown_table
from bench.kit import save_figure, write_table, write_text
from bench.ops.profile import CATEGORIES, COLUMNS, OpProfile, compare, native_gaps, profile_ops
from bench.options import Options
from bench.runtimes import ExportFailed
from bench.targets import Target


@dataclass(frozen=True)
class OpJob:
    target: Target
    batch: int
    options: Options


@dataclass(frozen=True)
class OpFailure:
    """A (target, batch, runtime) that could not be profiled: the runtime did not convert the target."""

    target: str
    batch: int
    runtime: str
    reason: str


def run_ops(jobs: Sequence[OpJob], out_dir: Path, runs: int, top: int, progress: bool = True,
            console: Console | None = None) -> list[OpProfile]:
    """Profile every job, writing ops.csv and categories.csv after each (an interrupted run keeps what it
    found), then report.md and ops.png."""
    console = console or Console(stderr=True)
    profiles: list[OpProfile] = []
    failures: list[OpFailure] = []
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
        task = bar.add_task("ops", total=len(jobs))
        for job in jobs:
            bar.update(task, description=f"{job.target.name} b{job.batch} {job.options.runtime}")
            try:
                profiles.append(profile_ops(job.target, job.batch, job.options, runs))
            except ExportFailed as e:
                failures.append(OpFailure(job.target.name, job.batch, job.options.runtime, e.reason))
            write_tables(profiles, out_dir)
            bar.advance(task)
        bar.update(task, description="done")
    threads = profiles[0].threads if profiles else (jobs[0].options.threads if jobs else None)
    dtype = jobs[0].options.dtype if jobs else "fp32"
    write_report(profiles, failures, out_dir / "report.md", top, machine_summary(environment("cpu", threads)), runs,
                 dtype)
    draw(profiles, out_dir / "ops.png")
    return profiles


def write_tables(profiles: Sequence[OpProfile], out_dir: Path) -> None:
    rows = pd.concat([p.rows for p in profiles], ignore_index=True) if profiles else pd.DataFrame(columns=COLUMNS)
    write_table(rows, out_dir / "ops.csv")
    write_table(compare(profiles), out_dir / "categories.csv")
    write_table(native_gaps(profiles), out_dir / "gaps.csv")


def top_ops(profile: OpProfile, n: int) -> pd.DataFrame:
    """The `n` costliest ops of a profile, nodes of the same op and input shapes summed (openvino and
    onnxruntime list each graph node on its own)."""
    grouped = (profile.rows.groupby(["op", "category", "shape"], as_index=False, sort=False)
               .agg(calls_per_run=("calls_per_run", "sum"), ms_per_run=("ms_per_run", "sum"), share=("share", "sum")))
    return grouped.sort_values("ms_per_run", ascending=False, ignore_index=True).head(n)


def _category_markdown(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["target", "batch"]).rename(columns={"fast_minus_best_ms": "fast - best other"})
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: fixed(v, 3))
    return markdown_table(shown, "l" + "r" * (len(shown.columns) - 1))


def _gaps_markdown(gaps: pd.DataFrame) -> str:
    shown = pd.DataFrame({"workload": gaps["target"], "batch": gaps["batch"], "torch-native": gaps["native"],
                          "its ms": gaps["native_ms"].map(lambda v: fixed(v, 3)), "best deployed": gaps["best"],
                          "their ms": gaps["best_ms"].map(lambda v: fixed(v, 3)),
                          "gap (ms)": gaps["gap_ms"].map(lambda v: f"{v:+.3f}"), "where": gaps["where"]})
    return markdown_table(shown, "lrlrlrrl")


def _top_markdown(frame: pd.DataFrame) -> str:
    shown = pd.DataFrame({"op": frame["op"], "category": frame["category"], "input shapes": frame["shape"],
                          "calls": frame["calls_per_run"].map(lambda v: f"{v:g}"),
                          "ms": frame["ms_per_run"].map(lambda v: fixed(v, 3)),
                          "share": frame["share"].map(lambda v: f"{100 * v:.1f}%")})
    return markdown_table(shown, "lllrrr")


def write_report(profiles: Sequence[OpProfile], failures: Sequence[OpFailure], path: Path, top: int,
                 machine: str, runs: int, dtype: str = "fp32") -> Path:
    threads = sorted({p.threads for p in profiles})
    lines = ["# Where the time goes, op by op", "",
             f"Machine: {machine}. Threads: {', '.join(map(str, threads)) or '-'}; {dtype}; {runs} profiled calls per "
             f"runtime after a warm-up; every figure is ms per call of the model.", "",
             "How each runtime is read: `reference` and `fast` by torch.profiler (each op's self CPU time, per op "
             "and input shapes, so no time is counted twice); `openvino` by PERF_COUNT (each node's real time, "
             "the mean over calls: the plugin gives no single call's); `onnxruntime` by its session profiler (each "
             "node's kernel time, the median over calls); `aot` by torch.profiler too, on its package compiled again "
             "with a record around each generated kernel (named by the ops fused into it, categorized by the first "
             "it names) and each extern call (its aten ops as for torch). A profiler adds overhead to every op it "
             "records, torch's the most: the figures say where the time goes; bench's latency is the figure to "
             "quote. `attention` holds softmax attention and every batched product over tokens (the dense "
             "affinities too); `other` is mostly allocation.", ""]
    gaps = native_gaps(profiles)
    if len(gaps):
        lines += ["## Where torch-native loses", "",
                  "Per workload, the torch-native runtime (fast, aot) and the deployed one (onnxruntime, openvino) "
                  "that spend least under the profiler, and the categories where the torch-native one spends most "
                  "more (the two largest).", "", _gaps_markdown(gaps), ""]
    table = compare(profiles)
    for (target, batch), group in table.groupby(["target", "batch"], sort=False):
        lines += [f"## {target}, batch {batch}", "", _category_markdown(group), ""]
        ours = [p for p in profiles if (p.target, p.batch) == (target, batch)]
        lines += ["Wall-clock per call under the profiler: "
                  + ", ".join(f"{p.runtime} {fixed(p.wall_ms, 3)} ms" for p in ours) + ".", ""]
        for p in ours:
            lines += [f"### Top {top} ops: {p.runtime} (of {len(p.rows)} rows, {fixed(p.total_ms, 3)} ms)", "",
                      _top_markdown(top_ops(p, top)), ""]
    if failures:
        lines += ["## Not profiled", ""] + [f"- {f.target}, batch {f.batch}, {f.runtime}: {f.reason}"
                                            for f in failures] + [""]
    return write_text(path, "\n".join(lines))


def draw(profiles: Sequence[OpProfile], path: Path) -> Path:
    """Per target and batch, one horizontal bar per runtime stacked by category (ms per call)."""
    keys = list(dict.fromkeys((p.target, p.batch) for p in profiles)) or [("nothing profiled", 0)]
    runtimes = list(dict.fromkeys(p.runtime for p in profiles))
    colours = dict(zip(CATEGORIES, plt.get_cmap("tab10").colors))
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 1.2 + 0.55 * max(len(runtimes), 1) * len(keys) + len(keys)),
                             squeeze=False)
    for ax, (target, batch) in zip(axes[:, 0], keys):
        ours = {p.runtime: p for p in profiles if (p.target, p.batch) == (target, batch)}
        names = [r for r in runtimes if r in ours]
        left = [0.0] * len(names)
        for category in CATEGORIES:
            ms = [float(ours[r].rows.loc[ours[r].rows["category"] == category, "ms_per_run"].sum()) for r in names]
            if any(ms):
                ax.barh(names, ms, left=left, color=colours[category], label=category)
                left = [a + b for a, b in zip(left, ms)]
        ax.set_title(f"{target}, batch {batch}", loc="left")
        ax.set_xlabel("ms per call (profiled)")
        ax.invert_yaxis()
    handles = {h.get_label(): h for ax in axes[:, 0] for h in ax.get_legend_handles_labels()[0]}
    if handles:
        fig.legend([handles[c] for c in CATEGORIES if c in handles], [c for c in CATEGORIES if c in handles],
                   loc="lower center", ncol=5, fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


__all__ = ["OpFailure", "OpJob", "draw", "run_ops", "top_ops", "write_report", "write_tables"]
