"""How well repeated runs of the same measurement agree: `python -m bench repeat` (and `make repeat`).

A user's check of their own machine's reproducibility: the same jobs are run N times (`repeat_runs`), each
run a whole `run_suite` in its own directory (run-1/, run-2/, ...), with a pause between. `run_agreement`
then lines the rows of the runs up and says, per row, how far apart its medians are, as measured
(`latency_median_ms`) and at the machine's reference speed (`latency_norm_ms`): the spread max / min - 1
across the runs, and whether it is within AGREE_WITHIN. On a VM whose speed drifts between runs the
measured figures move together and the normalised ones should not. Per workload measured with fast and a
deployed runtime, the same for `fast / best` (bench.fast_goal), and whether the goal verdict flipped
between runs. `write_repeat` writes repeat.csv (the row table), repeat.json (summary and tables) and
report.md.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from rich.console import Console

from bench.env import environment, machine_summary
from bench.fast_goal import DEPLOYED, fast_against_best
from bench.formatting import markdown_table, number
from bench.kit import print_frame, table_console, write_json, write_table, write_text
from bench.report import split_constant_columns
from bench.suite import Job, run_suite
from bench.targets import BenchInputError
from bench.timing import StopRule

AGREE_WITHIN = 0.05  # two runs agree on a figure when max / min - 1 <= this
SCHEMA = "container-bench-repeat/1"
# Columns that make two results rows (of two runs) the same row.
ROW_KEYS = ["name", "batch_size", "device", "dtype", "channels_last", "compile", "mode", "runtime"]
# The same for the rows of bench.fast_goal.fast_against_best (it names batch_size `batch`).
GOAL_KEYS = ["name", "batch", "device", "dtype", "channels_last", "compile", "mode"]
_WITHIN = f"within {AGREE_WITHIN:.0%}"


def spread(values: pd.DataFrame) -> pd.Series:
    """Per row, max / min - 1 across the columns (one per run); NaN where a run has no positive figure."""
    complete = (values.notna() & (values > 0)).all(axis=1)
    return (values.max(axis=1) / values.min(axis=1) - 1).where(complete)


@dataclass(frozen=True)
class RepeatSummary:
    """The figures of a repeat check; fractions in [0, 1], spreads in %, NaN where nothing was compared."""

    runs: int
    rows: int  # rows of the table (every row seen in any run)
    norm_compared: int  # rows with a normalised figure in every run
    norm_agree_fraction: float  # of those, the fraction whose spread is within AGREE_WITHIN
    norm_max_spread_pct: float
    norm_worst_row: str  # the row with that spread ("" when none)
    measured_compared: int
    measured_agree_fraction: float
    measured_max_spread_pct: float
    measured_worst_row: str
    machine_speed: tuple[float, ...]  # per run, the median over its rows of machine_speed (norm / measured)
    workloads: int  # workloads with fast / best in some run
    max_fast_best_spread_pct: float
    verdict_flips: int  # workloads whose goal verdict differs between runs
    flipped: tuple[str, ...]  # their labels


@dataclass(frozen=True)
class RepeatAgreement:
    """What `run_agreement` found: the per-row table, the per-workload fast / best table, the summary."""

    rows: pd.DataFrame
    goal: pd.DataFrame  # empty when no run measured fast against a deployed runtime
    summary: RepeatSummary

    def sentences(self) -> list[str]:
        """The summary in words, one sentence per figure."""
        s = self.summary
        lines = [f"{s.runs} runs of the same {s.rows} rows."]
        for what, column, compared, fraction, worst, row in (
                ("Normalised to the machine's reference speed", "latency_norm_ms", s.norm_compared,
                 s.norm_agree_fraction, s.norm_max_spread_pct, s.norm_worst_row),
                ("As measured", "latency_median_ms", s.measured_compared, s.measured_agree_fraction,
                 s.measured_max_spread_pct, s.measured_worst_row)):
            if not compared:
                lines.append(f"{what} (`{column}`): no row has a figure in every run.")
                continue
            left_out = s.rows - compared
            lines.append(f"{what} (`{column}`): {round(fraction * compared)} of {compared} rows "
                         f"({fraction:.0%}) agree {_WITHIN} across the runs; the largest spread is "
                         f"{worst:.1f}% ({row})"
                         + (f"; {left_out} row{'s' * (left_out != 1)} without a figure in every run left out"
                            if left_out else "") + ".")
        if any(math.isfinite(v) for v in s.machine_speed):
            lines.append("Machine speed (normalised / measured, median over the rows) per run: "
                         + ", ".join(number(v, 3) for v in s.machine_speed)
                         + " (1: the machine's reference speed; below 1: slower than it, above 1: faster).")
        if not s.workloads:
            lines.append(f"No workload was measured with fast and a deployed runtime ({', '.join(DEPLOYED)}): "
                         f"no fast / best to compare.")
        else:
            spread_text = (f"the largest spread of fast / best across the runs is {s.max_fast_best_spread_pct:.1f}%"
                           if math.isfinite(s.max_fast_best_spread_pct) else "no workload has fast / best in every run")
            flips = (f"the goal verdict flipped on {s.verdict_flips} ({', '.join(s.flipped)})" if s.verdict_flips
                     else "the goal verdict is the same in every run")
            lines.append(f"fast / best on {s.workloads} workload{'s' * (s.workloads != 1)}: {spread_text}; {flips}.")
        return lines

    def summary_line(self) -> str:
        """One line for the terminal."""
        s = self.summary
        line = (f"repeat: {_percent(s.norm_agree_fraction)} of rows agree {_WITHIN} normalised, "
                f"{_percent(s.measured_agree_fraction)} as measured, over {s.runs} runs")
        if s.workloads:
            line += (f"; fast / best spread up to {number(s.max_fast_best_spread_pct, 3)}%, "
                     f"{s.verdict_flips} verdict flip{'s' * (s.verdict_flips != 1)}")
        return line


def _percent(fraction: float) -> str:
    return f"{fraction:.0%}" if math.isfinite(fraction) else "-"


def _label(row: pd.Series | dict) -> str:
    """"conv b8 cpu fp32 fast NHWC": a row's name in a sentence (what is given of it)."""
    parts = [str(row.get("name", "?"))]
    batch = row.get("batch", row.get("batch_size"))
    if batch is not None and not pd.isna(batch):
        parts.append(f"b{int(batch)}")
    parts += [str(row[c]) for c in ("device", "dtype", "runtime") if c in row and not pd.isna(row[c])]
    channels_last = row.get("channels_last")
    if str(row.get("layout", "")) == "NHWC" or (isinstance(channels_last, (bool, np.bool_)) and channels_last):
        parts.append("NHWC")
    return " ".join(parts)


def _figures(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One line per row of a run: its keys, its status, and its medians (NaN unless the status is ok)."""
    frame = frame.drop_duplicates(keys)
    status = frame["status"].fillna("ok") if "status" in frame else pd.Series("ok", index=frame.index)
    ok = status == "ok"

    def figure(column: str) -> pd.Series:
        values = frame[column] if column in frame else pd.Series(np.nan, index=frame.index)
        return pd.to_numeric(values, errors="coerce").where(ok)

    return frame[keys].assign(status=status, measured=figure("latency_median_ms"), norm=figure("latency_norm_ms"),
                              speed=figure("machine_speed"))


def _aligned(parts: list[pd.DataFrame], keys: list[str]) -> pd.DataFrame:
    """The runs' lines side by side, one line per key: every key seen in any run, in the order first seen
    (an outer merge would sort them)."""
    merged = pd.concat([part[keys] for part in parts], ignore_index=True).drop_duplicates(keys)
    for part in parts:
        merged = merged.merge(part, on=keys, how="left")
    return merged.reset_index(drop=True)


def _row_table(frames: Sequence[pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, pd.Series], tuple[float, ...]]:
    """The row table, each kind's unrounded spreads (for the summary) and each run's median machine speed."""
    keys = [k for k in ROW_KEYS if all(k in f for f in frames)]
    n = len(frames)
    parts = [_figures(frame, keys).rename(columns={c: f"{c} {i}" for c in ("status", "measured", "norm", "speed")})
             for i, frame in enumerate(frames, 1)]
    merged = _aligned(parts, keys)
    table = pd.DataFrame({"name": merged["name"]})
    if "batch_size" in merged:
        table["batch"] = merged["batch_size"].astype("Int64")
    for column in ("device", "dtype", "runtime"):
        if column in merged:
            table[column] = merged[column]
    if "channels_last" in merged:
        table["layout"] = np.where(merged["channels_last"].eq(True), "NHWC", "NCHW")
    for column in ("mode", "compile"):
        if column in merged and merged[column].nunique(dropna=False) > 1:
            table[column] = merged[column]
    gaps = {}
    for kind in ("measured", "norm"):
        runs = merged[[f"{kind} {i}" for i in range(1, n + 1)]]
        for i in range(1, n + 1):
            table[f"{kind} {i} (ms)"] = runs[f"{kind} {i}"].round(4)
        gaps[kind] = spread(runs)
        table[f"{kind} spread (%)"] = (100 * gaps[kind]).round(2)
        table[f"{kind} {_WITHIN}"] = pd.array([pd.NA if pd.isna(g) else bool(g <= AGREE_WITHIN) for g in gaps[kind]],
                                              dtype="boolean")
    statuses = merged[[f"status {i}" for i in range(1, n + 1)]]
    if (statuses.fillna("not run") != "ok").any().any():
        table["status"] = [" / ".join(str(s) if isinstance(s, str) else "not run" for s in row)
                           if any(s != "ok" for s in row) else "ok" for row in statuses.itertuples(index=False)]
    speeds = tuple(float(merged[f"speed {i}"].median()) if merged[f"speed {i}"].notna().any() else math.nan
                   for i in range(1, n + 1))
    return table, gaps, speeds


def _goal_table(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    goals = [fast_against_best(f) for f in frames]
    present = [g for g in goals if not g.empty]
    if not present:
        return pd.DataFrame()
    keys = [k for k in GOAL_KEYS if all(k in g for g in present)]
    parts = [(goal if not goal.empty else present[0].iloc[0:0])[keys + ["fast / best", "goal"]]
             .drop_duplicates(keys).rename(columns={"fast / best": f"fast / best {i}", "goal": f"goal {i}"})
             for i, goal in enumerate(goals, 1)]
    merged = _aligned(parts, keys)
    n = len(frames)
    ratios = merged[[f"fast / best {i}" for i in range(1, n + 1)]].apply(pd.to_numeric, errors="coerce")
    verdicts = merged[[f"goal {i}" for i in range(1, n + 1)]]
    table = merged[keys].copy()
    if "batch" in table:
        table["batch"] = table["batch"].astype("Int64")
    for i in range(1, n + 1):
        table[f"fast / best {i}"] = ratios[f"fast / best {i}"]
    table["fast / best spread (%)"] = (100 * spread(ratios)).round(2)
    for i in range(1, n + 1):
        table[f"goal {i}"] = verdicts[f"goal {i}"]
    table["verdict flipped"] = [len({v for v in row if isinstance(v, str)}) > 1
                                for row in verdicts.itertuples(index=False)]
    return table


def run_agreement(frames: Sequence[pd.DataFrame]) -> RepeatAgreement:
    """How well the runs (each run_suite's results rows, in order) agree, row by row and workload by workload.

    Rows are the same row when ROW_KEYS match; a row missing from a run, or without a figure there (status
    other than ok), has no spread and counts in neither agreement fraction.
    """
    if len(frames) < 2:
        raise ValueError(f"{len(frames)} run(s): a repeat check compares at least 2")
    table, gaps, speeds = _row_table(frames)

    def agreement(kind: str) -> tuple[int, float, float, str]:
        gap = gaps[kind].dropna()
        if gap.empty:
            return 0, math.nan, math.nan, ""
        worst = gap.idxmax()
        return len(gap), float((gap <= AGREE_WITHIN).mean()), float(100 * gap.max()), _label(table.loc[worst])

    goal = _goal_table(frames)
    norm, measured = agreement("norm"), agreement("measured")
    goal_spread = goal["fast / best spread (%)"].dropna() if not goal.empty else pd.Series(dtype=float)
    flipped = goal[goal["verdict flipped"]] if not goal.empty else goal
    summary = RepeatSummary(
        runs=len(frames), rows=len(table),
        norm_compared=norm[0], norm_agree_fraction=norm[1], norm_max_spread_pct=norm[2], norm_worst_row=norm[3],
        measured_compared=measured[0], measured_agree_fraction=measured[1], measured_max_spread_pct=measured[2],
        measured_worst_row=measured[3], machine_speed=speeds, workloads=len(goal),
        max_fast_best_spread_pct=float(goal_spread.max()) if len(goal_spread) else math.nan,
        verdict_flips=len(flipped), flipped=tuple(_label(row) for _, row in flipped.iterrows()))
    return RepeatAgreement(table, goal, summary)


# --- running and writing --------------------------------------------------------------------------------------


def check_repeat(times: int, pause_s: float) -> None:
    """BenchInputError naming the flag unless times >= 2 and pause_s is a finite number >= 0."""
    if times < 2:
        raise BenchInputError(f"--times {times}: must be >= 2 (a repeat check compares runs)")
    if not (math.isfinite(pause_s) and pause_s >= 0):
        raise BenchInputError(f"--pause-s {pause_s:g}: must be a finite number >= 0")


def repeat_runs(jobs: list[Job], out_dir: str | Path, times: int = 2, pause_s: float = 10.0, *,
                console: Console | None = None, rss: bool = True, progress: bool = True,
                calibration_stop: StopRule | None = None, before: pd.DataFrame | None = None) -> list[pd.DataFrame]:
    """Run `jobs` `times` times with run_suite, into out_dir/run-1, run-2, ..., pausing `pause_s` seconds between
    runs; the results rows of each run, in order."""
    check_repeat(times, pause_s)
    console = console or table_console()
    out_dir = Path(out_dir)
    frames = []
    for i in range(1, times + 1):
        if i > 1 and pause_s > 0:
            console.print(f"pausing {pause_s:g} s before run {i}/{times}")
            time.sleep(pause_s)
        console.print(f"[bold]run {i}/{times}[/]: {out_dir / f'run-{i}'}")
        frames.append(run_suite(jobs, out_dir / f"run-{i}", rss=rss, console=console, progress=progress,
                                calibration_stop=calibration_stop, before=before))
    return frames


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """Booleans as yes / no (missing stays missing) for report.md and the terminal."""
    out = table.copy()
    for column in out:
        if pd.api.types.is_bool_dtype(out[column]) or str(out[column].dtype) == "boolean":
            out[column] = out[column].astype(object).map(lambda v: v if pd.isna(v) else number(bool(v)))
    return out


def _plain(value: Any) -> Any:
    """JSON-safe: NaN to null, tuples to lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _records(frame: pd.DataFrame) -> list[dict]:
    return json.loads(frame.to_json(orient="records")) if not frame.empty else []


def write_repeat(result: RepeatAgreement, out_dir: str | Path, *, command: str = "", pause_s: float | None = None,
                 frames: Sequence[pd.DataFrame] = ()) -> Path:
    """repeat.csv (the row table), repeat.json (summary, rows, fast / best table) and report.md in out_dir,
    each written atomically; the report's path. `frames` (the runs' rows) name the machine they ran on."""
    out_dir = Path(out_dir)
    first = next((f for f in frames if len(f)), None)
    env = dict(first.iloc[0]) if first is not None and "cpu_model" in first else environment()
    machine = machine_summary(env)
    runs = [f"run-{i}" for i in range(1, result.summary.runs + 1)]
    write_table(result.rows, out_dir / "repeat.csv")
    write_json(out_dir / "repeat.json", {
        "schema": SCHEMA, "machine": machine, "command": command, "pause_s": pause_s, "agree_within": AGREE_WITHIN,
        "runs": runs, "summary": {k: _plain(v) for k, v in asdict(result.summary).items()},
        "rows": _records(result.rows), "fast_against_best": _records(result.goal)})
    lines = ["# container-bench repeat", "",
             f"- machine: {machine}",
             f"- command: `{command}`" if command else "- command: -",
             f"- runs: {', '.join(f'[{r}]({r}/report.md)' for r in runs)}"
             + (f", {pause_s:g} s apart" if pause_s is not None else ""),
             f"- a row agrees when its median's spread across the runs, max / min - 1, is {AGREE_WITHIN:.0%} or "
             f"less", "",
             " ".join(result.sentences()), "",
             "## Rows", "",
             "`measured`: the median latency as timed (`latency_median_ms`); `norm`: the same at the machine's "
             "reference speed (`latency_norm_ms`, bench.machine), which takes out a drift of the machine's speed "
             "between runs. A row with no figure in a run (status other than ok, or not run) has no spread.", "",
             markdown_table(_display(result.rows)), ""]
    if not result.goal.empty:
        lines += ["## fast / best", "",
                  "`fast / best` of each run (bench.fast_goal: fast's median over the fastest deployed runtime's, "
                  "in that run), its spread across the runs, and the goal verdict of each run.", "",
                  markdown_table(_display(result.goal)), ""]
    return write_text(out_dir / "report.md", "\n".join(lines))


def print_repeat(result: RepeatAgreement, console: Console | None = None, out_dir: str | Path | None = None) -> None:
    """The row table (and the fast / best table, when any) in the terminal, then one summary line."""
    console = console or table_console()
    rows, caption = split_constant_columns(_display(result.rows))
    title = "run-to-run agreement (spread: max / min - 1 across the runs)"
    print_frame(rows, title + (f": {caption}" if caption else ""), console)
    if not result.goal.empty:
        goal, caption = split_constant_columns(_display(result.goal))
        print_frame(goal, "fast / best in each run" + (f": {caption}" if caption else ""), console)
    console.print(result.summary_line() + (f": [bold]{Path(out_dir) / 'report.md'}[/]" if out_dir else ""))


def repeat_check(jobs: list[Job], out_dir: str | Path, times: int = 2, pause_s: float = 10.0, *, command: str = "",
                 console: Console | None = None, **suite: Any) -> RepeatAgreement:
    """`python -m bench repeat`: run the jobs `times` times (repeat_runs; `suite` are run_suite's options), then
    write and print how well the runs agree."""
    console = console or table_console()
    frames = repeat_runs(jobs, out_dir, times, pause_s, console=console, **suite)
    result = run_agreement(frames)
    write_repeat(result, out_dir, command=command, pause_s=pause_s, frames=frames)
    print_repeat(result, console, out_dir)
    return result


__all__ = ["AGREE_WITHIN", "RepeatAgreement", "RepeatSummary", "check_repeat", "print_repeat", "repeat_check",
           "repeat_runs", "run_agreement", "spread", "write_repeat"]
