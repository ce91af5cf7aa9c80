"""report.md, its plots, and the terminal summary of a bench run."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from rich.console import Console

from bench.env import machine_summary
from bench.fast_goal import DEPLOYED, GOAL_KERNEL_FRACTION, fast_against_best, goal_summary
from bench.formatting import MISSING, markdown_table
from bench.intervals import interval_text, ratio_interval
from bench.kit import print_frame, save_figure, write_text
from bench.result import SAME_WORKLOAD, ok_medians, rounds_of
from bench.roofline import Roofline
from bench.runtimes import RUNTIMES

VARIANT = ["device", "dtype", "channels_last", "compile", "mode", "runtime"]


def _column(frame: pd.DataFrame, name: str, default: object = np.nan) -> pd.Series:
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def status_text(frame: pd.DataFrame) -> pd.Series:
    """Each row's status with its one-line reason, e.g. "mismatch: max rel error 0.3 > 1e-4"; "ok (noisy)"
    where the stop rule ran out of time before the spread settled."""
    status = _column(frame, "status", "ok").astype(str)
    reason = _column(frame, "status_reason", "").fillna("").astype(str)
    noisy = _column(frame, "noisy", False).fillna(False).astype(bool)
    text = status.where(reason == "", status + ": " + reason)
    return text.where(~((status == "ok") & noisy), "ok (noisy)")


def _two_digits(values: pd.Series) -> pd.Series:
    """Relative errors to two significant digits (2.4e-07), which rounding to decimals would make 0."""
    return values.map(lambda v: float(f"{v:.2g}") if pd.notna(v) else np.nan)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The human-sized view of a run: one line per row, units in the column names. Memory, each labelled:
    the isolated-process peak RSS (every runtime: the comparable figure) and the torch allocator's peak
    (torch runtimes and aot only: the others allocate outside torch)."""
    def col(name: str, scale: float = 1.0) -> pd.Series:
        return _column(frame, name) * scale

    out = pd.DataFrame({
        "name": frame["name"], "batch": frame["batch_size"], "device": frame["device"], "dtype": frame["dtype"],
        "layout": np.where(frame["channels_last"], "NHWC", "NCHW"), "runtime": frame["runtime"],
        "mode": frame["mode"],
        "params (M)": col("params", 1e-6).round(2), "GMACs": col("macs_fvcore", 1e-9).round(3),
        "median (ms)": col("latency_median_ms").round(3), "IQR (ms)": col("latency_iqr_ms").round(3),
        "p90 (ms)": col("latency_p90_ms").round(3), "img/s": col("throughput_img_s").round(1),
        "GFLOP/s": col("achieved_flops", 1e-9).round(1), "% peak": col("fraction_of_peak", 100).round(1),
        "torch alloc peak (MiB)": col("cpu_alloc_peak_bytes", 2**-20).fillna(col("cuda_peak_allocated_bytes", 2**-20))
        .round(1),
        "RSS peak (MiB)": col("rss_peak_bytes", 2**-20).round(1),
        "max rel error": _two_digits(col("max_rel_error")),
        "status": status_text(frame),
    })
    return out


RATIOS = ["speedup", "time / fastest", "vs ref fp32", "GEMM-roof bound", "kernel bound"]
BOUND_COLUMNS = ["% peak", "GEMM-roof bound", "kernel bound", "% of kernel bound"]


def runtime_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Every runtime against the reference and against each other on the same workloads, in one run.

    One line per workload (at one dtype) and runtime: its median latency; `speedup`, the reference's
    median over its own at the same dtype; `time / fastest`, its median over that of the fastest runtime
    on the workload (1 for the fastest); `vs ref fp32`, against the reference in fp32 (the seed's eager
    speed, which a low-precision run is for; shown when a dtype other than fp32 ran). The bounds say how
    far `vs ref fp32` could go on this machine (bench.profiler): `GEMM-roof bound` with every FLOP at the
    GEMM peak, `kernel bound` with the fused-attention calls at the speed they reach alone. `convert (s)`:
    the one-off conversion (or torch.compile); `max rel error`: against the reference module on the same
    input. A row that gave no latency (mismatch, export_failed, oom) keeps its line, with its status and
    reason and no figure. Each (device, dtype, target kind) ends with one geometric-mean line per runtime
    over the workloads where it has a figure. Empty when fewer than two runtimes ran.
    """
    if "runtime" not in frame or frame["runtime"].nunique() < 2:
        return pd.DataFrame()
    workload = SAME_WORKLOAD + ["dtype"]
    frame = frame.reset_index(drop=True)
    frame = frame.assign(
        median=ok_medians(frame), rounds=rounds_of(frame),
        order=frame.groupby(workload, sort=False, dropna=False).ngroup(),
        rank=frame["runtime"].map({r: i for i, r in enumerate(RUNTIMES)}).fillna(len(RUNTIMES)))
    ref = frame[frame["runtime"] == "reference"].drop_duplicates(workload)
    merged = (frame
              .merge(ref[workload + ["median"]], on=workload, how="left", suffixes=("", "_ref"))
              .merge(ref[ref["dtype"] == "fp32"][SAME_WORKLOAD + ["median"]], on=SAME_WORKLOAD, how="left",
                     suffixes=("", "_ref_fp32"))
              .sort_values(["order", "rank"], kind="stable"))
    merged = merged.reset_index(drop=True)
    fastest = merged.groupby(workload, sort=False, dropna=False)["median"].transform("min")
    fastest_at = merged.groupby(workload, sort=False, dropna=False)["median"].transform(
        lambda m: m.idxmin() if m.notna().any() else -1)
    vs_fastest = [ratio_interval(rounds, merged.at[at, "rounds"]) if at >= 0 else (np.nan, np.nan)
                  for rounds, at in zip(merged["rounds"], fastest_at)]
    measured = _column(merged, "latency_median_ms").where(merged["median"].notna())
    norm_interval = [interval_text(lo, hi) for lo, hi in zip(_column(merged, "latency_norm_low_ms"),
                                                                 _column(merged, "latency_norm_high_ms"))]
    convert = _column(merged, "convert_s").fillna(_column(merged, "compile_s"))
    table = pd.DataFrame({
        "target": merged["target"], "name": merged["name"], "batch": merged["batch_size"], "device": merged["device"],
        "dtype": merged["dtype"], "runtime": merged["runtime"], "median (ms)": merged["median"],
        "95% CI (ms)": np.where(merged["median"].notna(), norm_interval, MISSING),
        "measured (ms)": measured,
        "speedup": merged["median_ref"] / merged["median"], "time / fastest": merged["median"] / fastest,
        "time / fastest 95% CI": [interval_text(lo, hi) for lo, hi in vs_fastest],
        "vs ref fp32": merged["median_ref_fp32"] / merged["median"],
        "% peak": 100 * _column(merged, "fraction_of_peak").where(merged["median"].notna()),
        "GEMM-roof bound": merged["median_ref_fp32"] / _column(merged, "gemm_bound_ms"),
        "kernel bound": merged["median_ref_fp32"] / _column(merged, "kernel_bound_ms"),
        "% of kernel bound": 100 * _column(merged, "fraction_of_kernel_bound"),
        "convert (s)": convert, "max rel error": _two_digits(_column(merged, "max_rel_error")),
        "status": status_text(merged).to_numpy(),
    })
    if (table["dtype"] == "fp32").all():
        table = table.drop(columns="vs ref fp32")
    ratios = [c for c in RATIOS if c in table]
    groups = []
    for (device, dtype, target), rows in table.groupby(["device", "dtype", "target"], sort=False):
        groups.append(rows)
        if rows.groupby(["name", "batch"]).ngroups < 2:
            continue
        for runtime, mine in rows.groupby("runtime", sort=False):
            timed = mine[mine["median (ms)"].notna()]
            missing = len(mine) - len(timed)
            name = (f"geometric mean of {len(timed)} {target}{'s' * (len(timed) != 1)}"
                    + (f" ({missing} without a figure)" if missing else ""))
            geomean = np.exp(np.log(timed[ratios]).mean()) if len(timed) else pd.Series(np.nan, index=ratios)
            groups.append(pd.DataFrame([{"name": name, "device": device, "dtype": dtype, "runtime": runtime,
                                         "status": ""} | geomean.to_dict()]))
    out = pd.concat(groups, ignore_index=True).drop(columns="target")
    keep = ["name", "runtime", "median (ms)", "status"]
    out = out[[c for c in out if c in keep or (out[c].notna() & (out[c] != MISSING)).any()]]
    rounded = [c for c in out if c not in ("max rel error", "batch") and pd.api.types.is_float_dtype(out[c])]
    out[rounded] = out[rounded].round(3)
    out["batch"] = out["batch"].astype("Int64")
    return out


def split_constant_columns(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Columns with one value across all rows move into a caption, so the table fits a terminal."""
    constant = [c for c in ("device", "dtype", "layout", "runtime", "mode", "batch")
                if c in summary and summary[c].nunique(dropna=False) == 1]
    caption = ", ".join(f"{c} {summary[c].iloc[0]}" for c in constant)
    return summary.drop(columns=constant), caption


def print_summary(frame: pd.DataFrame, console: Console) -> None:
    """The run in the terminal: every row, then the runtime comparison (without the bounds; report.md has them)."""
    summary = summary_table(frame).drop(columns=["IQR (ms)", "params (M)"])
    summary, caption = split_constant_columns(summary.dropna(axis=1, how="all"))
    print_frame(summary, f"container-bench: {caption}" if caption else "container-bench", console)
    comparison = runtime_comparison(frame)
    if not comparison.empty:
        comparison, caption = split_constant_columns(comparison.drop(columns=BOUND_COLUMNS, errors="ignore"))
        print_frame(comparison, "runtimes on the same workloads (median latency)" + (f": {caption}" if caption else ""),
                    console)


def plot_latency_vs_batch(frame: pd.DataFrame, path: Path) -> Path | None:
    blocks = frame[(frame["target"] == "block") & (frame["status"] == "ok")]
    swept = blocks.groupby("name")["batch_size"].nunique()
    blocks = blocks[blocks["name"].isin(swept[swept > 1].index)]
    if blocks.empty:
        return None
    variants = blocks.groupby(VARIANT, dropna=False)
    fig, axes = plt.subplots(1, variants.ngroups, figsize=(6 * variants.ngroups, 4.5), squeeze=False)
    for ax, (variant, rows) in zip(axes[0], variants):
        for name, line in rows.sort_values("batch_size").groupby("name"):
            ax.errorbar(line["batch_size"], line["latency_median_ms"], yerr=line["latency_iqr_ms"] / 2,
                        marker="o", capsize=3, label=name)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median latency (ms), bars: IQR",
               title=" ".join(str(v) for v in variant[:2]) + (" NHWC" if variant[2] else ""))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_roofline(frame: pd.DataFrame, rooflines: list[Roofline], path: Path) -> Path | None:
    rows = frame[(frame["status"] == "ok") & frame.get("flop_per_byte", pd.Series(dtype=float)).notna()]
    if rows.empty or not rooflines:
        return None
    fig, axes = plt.subplots(1, len(rooflines), figsize=(6.5 * len(rooflines), 5), squeeze=False)
    for ax, roof in zip(axes[0], rooflines):
        mine = rows[(rows["device"] == roof.device) & (rows["dtype"] == roof.dtype)]
        if mine.empty:
            continue
        ai = np.logspace(np.log10(mine["flop_per_byte"].min() / 3), np.log10(mine["flop_per_byte"].max() * 3), 200)
        ax.plot(ai, np.minimum(roof.peak_flops, ai * roof.bandwidth_bytes_s) / 1e9, "k-", lw=2,
                label=f"roof: {roof.peak_flops / 1e9:.0f} GFLOP/s, {roof.bandwidth_bytes_s / 1e9:.1f} GB/s")
        label = np.where(mine["target"] == "block", mine["kind"], mine["name"])
        for kind, points in mine.groupby(label):
            ax.scatter(points["flop_per_byte"], points["achieved_flops"] / 1e9, label=kind, s=25)
        ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte, allocator estimate)",
               ylabel="achieved GFLOP/s", title=f"roofline: {roof.device} {roof.dtype}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def goal_section(frame: pd.DataFrame, before: pd.DataFrame | None = None) -> list[str]:
    """The report's lines on container.optimize against the best deployment runtime (none where the run has
    no workload measured with both)."""
    goal = fast_against_best(frame, before)
    if goal.empty:
        return []
    return ["## container.optimize against the best runtime", "",
            f"`fast / best`: fast's median over the fastest of {', '.join(DEPLOYED)} on the workload, in this run"
            + (" (`before`: the same ratio in the earlier run given with --before)" if "fast / best before" in goal
               else "")
            + f". The goal: fast / best <= 1 and >= {100 * GOAL_KERNEL_FRACTION:.0f}% of the kernel bound. "
            + ("`torch-native / best`: the faster of fast and aot (the AOTInductor package) over the same best. "
               if "torch-native / best" in goal else "")
            + goal_summary(goal), "", markdown_table(goal), ""]


def write_report(frame: pd.DataFrame, out_dir: Path, rooflines: list[Roofline],
                 before: pd.DataFrame | None = None) -> Path:
    out_dir = Path(out_dir)
    plots = [p for p in (plot_latency_vs_batch(frame, out_dir / "latency_vs_batch.png"),
                         plot_roofline(frame, rooflines, out_dir / "roofline.png")) if p]
    env = frame.iloc[0] if len(frame) else {}
    lines = ["# container-bench run", ""]
    lines += [f"- machine: {machine_summary(dict(env))}",
              f"- torch {env.get('torch_version', '?')}, CUDA {env.get('cuda_version') or '-'}, "
              f"threads {env.get('threads', '?')}, commit {env.get('git_commit', '?')}, {env.get('timestamp_utc', '')}"]
    for roof in rooflines:
        lines.append(f"- roofline {roof.device} {roof.dtype}: GEMM peak {roof.peak_flops / 1e9:.1f} GFLOP/s "
                     f"(n={roof.gemm_size}), copy bandwidth {roof.bandwidth_bytes_s / 1e9:.1f} GB/s")
    lines += ["", "FLOPs = 2 x fvcore multiply-adds of the reference module (GMACs column), whatever the runtime. "
              "Latency: median over timed runs after warm-up. Memory: `RSS peak`, the peak resident set of the "
              "workload alone in a fresh process (every runtime: the comparable figure); `torch alloc peak`, "
              "allocator-exact peak above the level before the call (torch runtimes and aot only).", ""]
    lines += [markdown_table(summary_table(frame)), ""]
    comparison = runtime_comparison(frame)
    if not comparison.empty:
        lines += ["## Runtimes on the same workloads", "",
                  "`speedup`: the reference's median latency / the runtime's, at the same dtype; `time / fastest`: "
                  "the runtime's median / the fastest runtime's on that workload (1 = the fastest); `vs ref fp32`: "
                  "against the reference in fp32 (the seed's eager speed); `% peak`: achieved FLOP/s (the "
                  "reference module's FLOPs) over the GEMM peak calibrated in this run at that dtype. The bounds "
                  "are the most `vs ref fp32` could be here: `GEMM-roof bound` with every FLOP at that GEMM peak; "
                  "`kernel bound` with the fused-attention calls at the speed they reach when timed alone "
                  "(fp32 or this dtype, whichever is faster) and every other FLOP at the GEMM peak; "
                  "`% of kernel bound`: how close the runtime comes to it. `convert (s)`: the one-off conversion "
                  "(ONNX export and session, OpenVINO conversion and compilation, AOTInductor export, compilation "
                  "and choice of its source module, or its cache hit, or torch.compile), not in the latency. "
                  "`max rel error`: max |out - ref| / max |ref| against the reference module on the same input; "
                  "over the tolerance (fp32 1e-4, bf16/fp16 2e-2) the row is a mismatch and gets no latency. "
                  "Geometric means are over the workloads where the runtime has a figure.", "",
                  markdown_table(comparison), ""]
    lines += goal_section(frame, before)
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return write_text(out_dir / "report.md", "\n".join(lines) + "\n")
