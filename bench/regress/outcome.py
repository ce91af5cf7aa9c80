"""What the gate found, row by row: the verdicts, the terminal table, the JSON report and the history."""
from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.table import Table

from bench.env import fingerprint
from bench.kit import write_text
from bench.regress.statistics import FIGURE_LABELS, FigureChange, TimeVerdict, compare_deterministic, decide
from bench.regress.rows import METHOD, Row
from bench.regress.suite_file import GateConfig
from bench.regress.worker import PASSES_ENV, SLOWDOWN_ENV
from bench.regress.sides import Side


@dataclass
class RowResult:
    row: str
    verdict: TimeVerdict | None
    changes: list[FigureChange]
    note: str = ""
    broken: bool = False  # this tree cannot build the row at all

    @property
    def regressed(self) -> bool:
        return bool(self.broken or (self.verdict and self.verdict.regressed) or any(c.increase for c in self.changes))


@dataclass
class Report:
    mode: str  # "baseline" or "against"
    reference: Side
    current: Side
    rows: list[RowResult]
    min_effect: float
    alpha: float
    reference_name: str

    @property
    def regressed(self) -> list[RowResult]:
        return [r for r in self.rows if r.regressed]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "reference": self.reference_name, "reference_commit": self.reference.commit,
                "current_commit": self.current.commit, "min_effect": self.min_effect, "alpha": self.alpha,
                "regressed": [r.row for r in self.regressed], "injected": self.current.injected,
                "injected_passes": self.current.passes,
                "rows": [{"row": r.row, "regressed": r.regressed, "note": r.note,
                          "time": asdict(r.verdict) if r.verdict else None,
                          "changes": [asdict(c) | {"increase": c.increase} for c in r.changes],
                          "current_normalised": self.current.normalised(r.row),
                          "reference_normalised": self.reference.normalised(r.row)} for r in self.rows]}


def compare(reference: Side, current: Side, config: GateConfig) -> list[RowResult]:
    """A verdict for each of the config's rows, at its effect size and level."""
    changes = compare_deterministic(reference.deterministic, current.deterministic)
    results = []
    for row in config.rows:
        name = row.name
        mine = [c for c in changes if c.row == name]
        if name in current.errors:
            results.append(RowResult(name, None, mine, f"cannot build here: {current.errors[name]}", broken=True))
        elif name not in reference.deterministic:
            results.append(RowResult(name, None, mine, _new_row_note(reference, name)))
        else:
            verdict = decide(reference.normalised(name), current.normalised(name), config.min_effect,
                             config.alpha)
            results.append(RowResult(name, verdict, mine))
    return results


def _new_row_note(reference: Side, name: str) -> str:
    """Why a row has nothing to compare with: it does not fail the gate (the row is new)."""
    if name in reference.errors:
        return f"new row, nothing to compare (the reference cannot build it: {reference.errors[name]})"
    if reference.label == "baseline":
        return "new, not in the baseline (run make regress-update)"
    return "new row, nothing to compare (not in the reference)"


def _verdict_text(r: RowResult) -> str:
    v = r.verdict
    if r.regressed:
        why = [r.note] if r.broken else []
        if v is not None and v.regressed:
            why.append(f"{v.change:+.1%} slower")
        why += [f"{FIGURE_LABELS[c.figure]} up" for c in r.changes if c.increase]
        return "[bold red]REGRESSED[/] (" + ", ".join(why) + ")"
    if v is not None and v.faster:
        return "[green]faster[/] (update the baseline?)"
    if r.note:
        return f"[yellow]{r.note}[/]"
    return "[green]ok[/] (figures went down)" if r.changes else "[green]ok[/]"


def render(report: Report, console) -> None:
    title = (f"regress: {report.current.commit} against {report.reference_name} ({report.reference.commit}); "
             f"slower by >= {report.min_effect:.0%} and p < {report.alpha:g} fails")
    table = Table(title=title, title_justify="left")
    for col, justify in (("row", "left"), ("time change", "right"), ("p (slower)", "right"),
                         ("rounds new/ref", "right"), ("row ms", "right"), ("deterministic figures", "left"),
                         ("verdict", "left")):
        table.add_column(col, justify=justify)
    for r in report.rows:
        v = r.verdict
        if v is None:
            change, p, n = "-", "-", "-"
        else:
            change, p, n = f"{v.change:+.1%}", f"{v.p_slower:.2g}", f"{v.n_new}/{v.n_reference}"
        figures = "; ".join(c.text() for c in r.changes) or "unchanged"
        ms = report.current.median_row_ms(r.row)
        table.add_row(r.row, change, p, n, f"{ms:.1f}" if math.isfinite(ms) else "-", figures, _verdict_text(r),
                      style="red" if r.regressed else None)
    console.print(table)
    if report.current.passes:
        console.print(f"[yellow]{SLOWDOWN_ENV} / {PASSES_ENV} is set: extra elementwise passes injected into the "
                      f"current side ({', '.join(f'{k}: {v}' for k, v in report.current.passes.items())})[/]")
    if report.regressed:
        console.print(f"[bold red]{len(report.regressed)} of {len(report.rows)} rows regressed:[/] "
                      + ", ".join(r.row for r in report.regressed))
    else:
        console.print(f"[green]no regression in {len(report.rows)} rows[/]")


def append_history(path: Path, sides: Sequence[Side], mode: str, threads: int,
                   regressed: Sequence[str] = (), rows: Sequence[Row] = (), suite: str | None = None) -> None:
    """One JSON line per row and side (with its runtime where `rows` names it, and its suite); the file is
    rewritten atomically (bench.kit)."""
    path = Path(path)
    runtimes = {r.name: r.runtime for r in rows}
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    lines = []
    for side in sides:
        for row, figures in side.deterministic.items():
            norm = side.normalised(row)
            if not norm:
                continue
            median = float(np.median(norm))
            lines.append(json.dumps({
                "timestamp_utc": stamp, "git_commit": side.commit, "side": side.label, "mode": mode,
                "fingerprint": fingerprint("cpu", threads), "threads": threads, "method": METHOD, "row": row,
                "normalised_time_median": median, "normalised_throughput": 1.0 / median,
                "row_ms_median": side.median_row_ms(row),
                "calibration_ms_median": side.median_calibration_ms(row), "rounds": len(norm),
                "regressed": row in regressed and side.label == "current",
                "injected_passes": side.passes.get(row, 0)}
                | ({"runtime": runtimes[row]} if row in runtimes else {})
                | ({"suite": suite} if suite else {}) | figures))
    if not lines:
        return
    previous = path.read_text() if path.exists() else ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    write_text(path, previous + "\n".join(lines) + "\n")
