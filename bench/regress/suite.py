"""What the regression gate measures: the quick suite of rows, and how a row's time is normalised."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import container
from bench.env import REPO_ROOT
from bench.targets import STAGE_SHAPES, BenchInputError

# How a normalised time is made: the calibration workload and the interleaving (two untimed calls of
# a workload before each of its timed calls, row and calibration in turn). Figures made by another
# method are not comparable; baselines and history records carry it.
METHOD = "interleaved-calls/gemm768+dwconv128x112x5/v1"

STAGE_DIM, STAGE_SIDE = STAGE_SHAPES[2][:2]  # 320@14x14: the stage that holds most of a network's blocks
BLOCK_BATCH = 4  # small, so that one timed round of a row is a fraction of a second
DEFAULT_ROUNDS = 8
DEFAULT_UPDATE_ROUNDS = 16  # a baseline is measured once and compared with many times: make it precise
DEFAULT_THREADS = 1  # on a shared CI box, more intra-op threads than free cores make timings meaningless
DEFAULT_PAIRS = 3  # timed row calls per round are pairs + 1, each between calibration calls


@dataclass(frozen=True)
class Row:
    name: str
    target: str  # "block" or "network"
    batch: int
    kind: str | None = None
    dim: int | None = None
    side: int | None = None
    network: str | None = None

    def spec(self) -> dict[str, Any]:
        """The row as the worker protocol sends it (JSON)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def suite() -> list[Row]:
    """Every block kind at one stage shape, and Container-Light at batch 1."""
    rows = [Row(f"{kind}@{STAGE_DIM}x{STAGE_SIDE} b{BLOCK_BATCH}", "block", BLOCK_BATCH, kind=kind, dim=STAGE_DIM,
                side=STAGE_SIDE) for kind in container.BLOCK_KINDS]
    rows.append(Row("container_light b1", "network", 1, network="container_light"))
    return rows


def select_rows(names: Sequence[str] | None) -> list[Row]:
    rows = suite()
    if not names:
        return rows
    by_name = {r.name: r for r in rows}
    by_prefix = {r.name.split("@")[0].split(" ")[0]: r for r in rows}  # "conv", "container_light"
    chosen = []
    for name in names:
        row = by_name.get(name) or by_prefix.get(name)
        if row is None:
            raise BenchInputError(f"--rows {name!r}: not in the suite; valid rows: "
                                  f"{', '.join(by_prefix)}")
        if row not in chosen:
            chosen.append(row)
    return chosen


def repo_relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for messages), else as it is."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)
