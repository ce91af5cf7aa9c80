"""container.optimize (`fast`) against the best deployment runtime, workload by workload.

The goal the fast path is held to: on every workload a run measured with `fast` and at least one of the
other deployment runtimes (onnxruntime, openvino), fast's median latency (at the machine's reference speed) is
at most the fastest of those runtimes' in the same run (the table gives the ratio's 95% interval beside it),
and fast reaches GOAL_KERNEL_FRACTION of the harness's kernel bound (bench.profiler.kernel_bound). A row
either meets both or the table says which it misses. Given an earlier run (`before`, its results.csv), each
row also shows fast's ratio to the best runtime there.

Where the run has `aot` rows (the AOTInductor package, itself compiled from the faster of the reference and
fast modules), a `torch-native / best` column beside it: the faster of fast and aot on the workload against the
same best deployment runtime, with its 95% interval; which of the two it was is in `torch-native`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.intervals import interval_text, ratio_interval
from bench.result import SAME_WORKLOAD, ok_medians, rounds_of
from bench.targets import BenchInputError

GOAL_KERNEL_FRACTION = 0.9
FAST = "fast"
DEPLOYED = ("onnxruntime", "openvino")  # the runtimes fast is held against
TORCH_NATIVE = (FAST, "aot")  # deployments that stay in torch: the fast path, and its AOTInductor package
WORKLOAD = SAME_WORKLOAD + ["dtype"]


def _ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per workload with fast and a deployed runtime: fast's median, the best deployed runtime and its
    median, their ratio, and fast's fraction of the kernel bound."""
    frame = frame.assign(median=ok_medians(frame), rounds=rounds_of(frame))
    keys = [c for c in WORKLOAD if c in frame]
    fast = frame[frame["runtime"] == FAST].drop_duplicates(keys)
    other = frame[frame["runtime"].isin(DEPLOYED) & frame["median"].notna()]
    best = other.loc[other.groupby(keys, dropna=False)["median"].idxmin()] if len(other) else other
    merged = fast.merge(best[keys + ["runtime", "median", "rounds"]], on=keys, how="inner", suffixes=("", "_best"))
    kernel = merged.get("fraction_of_kernel_bound", pd.Series(np.nan, index=merged.index))
    interval = [ratio_interval(a, b) for a, b in zip(merged["rounds"], merged["rounds_best"])]
    table = pd.DataFrame({
        **{k: merged[k] for k in keys},
        "fast (ms)": merged["median"], "best runtime": merged["runtime_best"], "best (ms)": merged["median_best"],
        "fast / best": merged["median"] / merged["median_best"],
        "low": [lo for lo, _ in interval], "high": [hi for _, hi in interval],
        "% of kernel bound": 100 * kernel,
    })
    if "aot" not in set(frame["runtime"]):
        return table  # torch-native would be fast itself
    native = frame[frame["runtime"].isin(TORCH_NATIVE) & frame["median"].notna()]
    native = native.loc[native.groupby(keys, dropna=False)["median"].idxmin()] if len(native) else native
    both = merged.merge(native[keys + ["runtime", "median", "rounds"]], on=keys, how="left",
                        suffixes=("", "_native"))
    interval = [ratio_interval(a, b) if isinstance(a, list) else (np.nan, np.nan)
                for a, b in zip(both["rounds_native"], both["rounds_best"])]
    return table.assign(**{"torch-native": both["runtime_native"].to_numpy(),
                           "torch-native / best": (both["median_native"] / both["median_best"]).to_numpy(),
                           "native low": [lo for lo, _ in interval], "native high": [hi for _, hi in interval]})



def fast_against_best(frame: pd.DataFrame, before: pd.DataFrame | None = None) -> pd.DataFrame:
    """The goal table of a run (its results rows), with `before`'s ratios beside it when given. Empty when the
    run has no workload measured with both fast and a deployed runtime."""
    if "runtime" not in frame or not {FAST} & set(frame["runtime"]) or not set(DEPLOYED) & set(frame["runtime"]):
        return pd.DataFrame()
    table = _ratios(frame)
    if table.empty:
        return table
    if before is not None and "runtime" in before:
        previous = _ratios(before)
        keys = [c for c in WORKLOAD if c in table and c in previous]
        table = table.merge(previous[keys + ["fast / best"]].rename(columns={"fast / best": "fast / best before"}),
                            on=keys, how="left")
        table.insert(table.columns.get_loc("fast / best"), "fast / best before", table.pop("fast / best before"))
    faster = table["fast / best"] <= 1.0
    near = table["% of kernel bound"] >= 100 * GOAL_KERNEL_FRACTION
    table["goal"] = np.select([faster & near, faster, near], ["met", "under 90% of bound", "slower than best"],
                              "slower, under 90% of bound")
    table.loc[table["fast (ms)"].isna(), "goal"] = "no fast figure"
    table.insert(table.columns.get_loc("low"), "fast / best 95% CI",
                 [interval_text(lo, hi) for lo, hi in zip(table.pop("low"), table.pop("high"))])
    if "torch-native / best" in table:
        table.insert(table.columns.get_loc("native low"), "torch-native / best 95% CI",
                     [interval_text(lo, hi) for lo, hi in zip(table.pop("native low"), table.pop("native high"))])
        # beside fast's: the goal columns (kernel bound, goal) stay fast's own
        moved = ["torch-native", "torch-native / best", "torch-native / best 95% CI"]
        rest = [c for c in table if c not in moved]
        at = rest.index("fast / best 95% CI") + 1
        table = table[rest[:at] + moved + rest[at:]]
    out = table.rename(columns={"batch_size": "batch"}).drop(
        columns=[c for c in ("device", "channels_last", "compile", "mode") if table[c].nunique(dropna=False) <= 1],
        errors="ignore")
    numeric = [c for c in out if pd.api.types.is_float_dtype(out[c])]
    out[numeric] = out[numeric].round(3)
    return out


def earlier_run(text: str) -> pd.DataFrame:
    """An earlier run's rows (`--before RUN`): its directory or its results.csv."""
    path = Path(text)
    csv = path / "results.csv" if path.is_dir() else path
    try:
        frame = pd.read_csv(csv)
    except (OSError, ValueError) as e:
        raise BenchInputError(f"{text}: no readable results.csv ({type(e).__name__})") from None
    missing = {"name", "batch_size", "runtime", "latency_median_ms"} - set(frame)
    if missing:
        raise BenchInputError(f"{text}: not a bench run's results (no {', '.join(sorted(missing))} column)")
    return frame


def goal_summary(table: pd.DataFrame) -> str:
    """One sentence: how many rows meet the goal, and the geometric mean of fast / best (before and after)."""
    if table.empty:
        return ""
    met = int((table["goal"] == "met").sum())
    geo = float(np.exp(np.log(table["fast / best"].dropna()).mean()))
    text = f"{met} of {len(table)} workloads meet the goal; geometric mean of fast / best {geo:.2f}"
    if "fast / best before" in table and table["fast / best before"].notna().any():
        before = float(np.exp(np.log(table["fast / best before"].dropna()).mean()))
        text += f" (before: {before:.2f})"
    if "torch-native / best" in table and table["torch-native / best"].notna().any():
        native = float(np.exp(np.log(table["torch-native / best"].dropna()).mean()))
        text += f"; of torch-native (the faster of fast and aot) / best {native:.2f}"
    return text + "."


__all__ = ["DEPLOYED", "GOAL_KERNEL_FRACTION", "TORCH_NATIVE", "fast_against_best", "earlier_run", "goal_summary"]
