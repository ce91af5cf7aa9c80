"""How numbers and tables are written in every report and terminal summary of bench and search.

A missing value (None, NaN, pd.NA) prints as "-" everywhere, so a table never shows "nan".
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

MISSING = "-"
_SI_PREFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return isinstance(value, (float, np.floating)) and math.isnan(value)
    except TypeError:
        return False


def si(value: Any, digits: int = 3) -> str:
    """A count with an SI prefix and `digits` significant digits: 2.5M params, 1.31G FLOPs, 812."""
    if is_missing(value):
        return MISSING
    value = float(value)
    for scale, prefix in _SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{prefix}"
    return f"{value:.{digits}g}"


def number(value: Any, digits: int = 4) -> str:
    """A score or statistic: integers as they are, floats to `digits` significant digits, bools as yes/no."""
    if is_missing(value):
        return MISSING
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.{digits}g}"


def fixed(value: Any, decimals: int = 2) -> str:
    """A value in fixed units such as milliseconds: 12.34."""
    return MISSING if is_missing(value) else f"{float(value):.{decimals}f}"


def markdown_table(frame: pd.DataFrame, align: str | Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of `frame` (no index), written by pandas (tabulate).

    `align` is one letter per column, "l" or "r" (e.g. "rrl"); by default numeric columns align right.
    Cells are printed as they are (pre-formatted strings stay untouched; missing values print as "-").
    """
    if align is None:
        align = ["r" if pd.api.types.is_numeric_dtype(frame[c]) else "l" for c in frame.columns]
    if len(align) != len(frame.columns):
        raise ValueError(f"align {align!r}: one letter per column, {len(frame.columns)} columns")
    words = {"l": "left", "r": "right", "c": "center"}
    cells = frame.astype(object).map(lambda v: MISSING if is_missing(v) else v)
    return cells.to_markdown(index=False, colalign=[words[a] for a in align], disable_numparse=True)


__all__ = ["MISSING", "fixed", "is_missing", "markdown_table", "number", "si"]
