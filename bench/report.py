"""report.md, its plots, and the terminal summary of a bench run."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.env import machine_summary
from bench.io import save_figure, write_text
from bench.roofline import Roofline

VARIANT = ["device", "dtype", "channels_last", "compile", "mode", "impl"]


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The human-sized view of a run: one line per row, units in the column names."""
    ok = frame.get("status", pd.Series("ok", index=frame.index)) == "ok"

    def col(name: str, scale: float = 1.0) -> pd.Series:
        return frame[name] * scale if name in frame else pd.Series(np.nan, index=frame.index)

    out = pd.DataFrame({
        "name": frame["name"], "batch": frame["batch_size"], "device": frame["device"], "dtype": frame["dtype"],
        "layout": np.where(frame["channels_last"], "NHWC", "NCHW"), "impl": frame["impl"], "mode": frame["mode"],
        "params (M)": col("params", 1e-6).round(2), "GMACs": col("macs_fvcore", 1e-9).round(3),
        "median (ms)": col("latency_median_ms").round(3), "IQR (ms)": col("latency_iqr_ms").round(3),
        "p90 (ms)": col("latency_p90_ms").round(3), "img/s": col("throughput_img_s").round(1),
        "GFLOP/s": col("achieved_flops", 1e-9).round(1), "% peak": col("fraction_of_peak", 100).round(1),
        "alloc peak (MiB)": col("cpu_alloc_peak_bytes", 2**-20).fillna(col("cuda_peak_allocated_bytes", 2**-20))
        .round(1),
        "status": np.where(ok & frame.get("noisy", False), "ok (noisy)", frame.get("status", "ok")),
    })
    return out


SAME_WORKLOAD = ["name", "batch_size", "device", "channels_last", "compile", "mode"]


def impl_comparison(frame: pd.DataFrame) -> pd.DataFrame:
    """Each non-reference implementation against the reference on the same workloads, in one run.

    `speedup` compares at the same dtype; `vs ref fp32` against the reference's fp32 latency (the
    seed's eager speed), which is what a low-precision fast path is for. The bounds say how far
    `vs ref fp32` could go on this machine: `GEMM-roof bound` with every FLOP at the GEMM peak,
    `kernel bound` with the implementation's fused-attention calls at the speed they reach alone
    and the rest at the GEMM peak (bench.profiler). Each (device, dtype, impl) group of two or
    more blocks (or networks) ends with the geometric mean over them.
    """
    if "impl" not in frame or "reference" not in set(frame["impl"]) or frame["impl"].nunique() < 2:
        return pd.DataFrame()
    ok = frame[frame["status"] == "ok"]
    ref = ok[ok["impl"] == "reference"]
    timed = ["latency_median_ms", "fraction_of_peak"]
    for bound in ("gemm_bound_ms", "kernel_bound_ms", "fraction_of_kernel_bound"):
        if bound not in ok:
            ok = ok.assign(**{bound: np.nan})
    merged = (ok[ok["impl"] != "reference"]
              .merge(ref[SAME_WORKLOAD + ["dtype"] + timed], on=SAME_WORKLOAD + ["dtype"], how="left",
                     suffixes=("", "_ref"))
              .merge(ref[ref["dtype"] == "fp32"][SAME_WORKLOAD + ["latency_median_ms"]], on=SAME_WORKLOAD,
                     how="left", suffixes=("", "_ref_fp32")))
    table = pd.DataFrame({
        "target": merged["target"], "name": merged["name"], "batch": merged["batch_size"], "device": merged["device"],
        "dtype": merged["dtype"], "impl": merged["impl"],
        "reference (ms)": merged["latency_median_ms_ref"], "impl (ms)": merged["latency_median_ms"],
        "speedup": merged["latency_median_ms_ref"] / merged["latency_median_ms"],
        "vs ref fp32": merged["latency_median_ms_ref_fp32"] / merged["latency_median_ms"],
        "reference % peak": 100 * merged["fraction_of_peak_ref"], "impl % peak": 100 * merged["fraction_of_peak"],
        "GEMM-roof bound": merged["latency_median_ms_ref_fp32"] / merged["gemm_bound_ms"],
        "kernel bound": merged["latency_median_ms_ref_fp32"] / merged["kernel_bound_ms"],
        "% of kernel bound": 100 * merged["fraction_of_kernel_bound"],
    })
    groups = []
    for (device, dtype, impl, target), rows in table.groupby(["device", "dtype", "impl", "target"], sort=False):
        groups.append(rows)
        if len(rows) > 1:
            geomean = np.exp(np.log(rows[["speedup", "vs ref fp32", "GEMM-roof bound", "kernel bound"]]).mean())
            groups.append(pd.DataFrame([{"name": f"geometric mean of {len(rows)} {target}s", "device": device,
                                         "dtype": dtype, "impl": impl} | geomean.to_dict()]))
    out = pd.concat(groups, ignore_index=True).drop(columns="target").dropna(axis=1, how="all").round(3)
    out["batch"] = out["batch"].astype("Int64")
    return out


def split_constant_columns(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Columns with one value across all rows move into a caption, so the table fits a terminal."""
    constant = [c for c in ("device", "dtype", "layout", "impl", "mode", "batch")
                if c in summary and summary[c].nunique(dropna=False) == 1]
    caption = ", ".join(f"{c} {summary[c].iloc[0]}" for c in constant)
    return summary.drop(columns=constant), caption


def table_console(**kwargs) -> Console:
    """A console for wide tables: the terminal's width, or 160 columns where output is piped (CI logs),
    where rich would otherwise squeeze every table into 80."""
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=160, **kwargs)


def print_summary(frame: pd.DataFrame, console: Console) -> None:
    summary, caption = split_constant_columns(
        summary_table(frame).drop(columns=["IQR (ms)", "params (M)"]))
    print_frame(summary, f"container-bench: {caption}" if caption else "container-bench", console)
    comparison = impl_comparison(frame)
    if not comparison.empty:
        print_frame(comparison, "implementations on the same workloads (median latency)", console)


def print_frame(frame: pd.DataFrame, title: str, console: Console) -> None:
    table = Table(title=title)
    for name in frame.columns:
        table.add_column(str(name), justify="right" if pd.api.types.is_numeric_dtype(frame[name]) else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*("" if isinstance(v, float) and math.isnan(v) else str(v) for v in row))
    console.print(table)


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


def write_report(frame: pd.DataFrame, out_dir: Path, rooflines: list[Roofline]) -> Path:
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
    lines += ["", "FLOPs = 2 x fvcore multiply-adds (GMACs column). Latency: median over timed runs after warm-up; "
              "alloc peak: allocator-exact peak above the level before the call.", ""]
    lines += [summary_table(frame).to_markdown(index=False), ""]
    comparison = impl_comparison(frame)
    if not comparison.empty:
        lines += ["## Implementations on the same workloads", "",
                  "`speedup`: reference / implementation median latency at the same dtype; `vs ref fp32`: against "
                  "the reference in fp32 (the seed's eager speed); `% peak`: achieved FLOP/s over the GEMM peak "
                  "calibrated in this run at that dtype. The bounds are the most `vs ref fp32` could be here: "
                  "`GEMM-roof bound` with every FLOP at that GEMM peak; `kernel bound` with the "
                  "implementation's fused-attention calls at the speed they reach when timed alone "
                  "(fp32 or this dtype, whichever is faster) and every other FLOP at the GEMM peak; "
                  "`% of kernel bound`: how close the implementation comes to it.", "",
                  comparison.astype(object).where(comparison.notna(), None).to_markdown(index=False, missingval=""),
                  ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return write_text(out_dir / "report.md", "\n".join(lines) + "\n")
