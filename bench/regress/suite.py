"""What the regression gate measures: the quick suite of rows (each on a runtime), and how a row's time is
normalised."""
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

# Each row runs on a runtime (bench.runtimes). The default suite gates the reference (every block kind,
# Container-Light) and the fast path users ship (container.optimize: the two block kinds that dominate
# its time, and Container-Light), so that a slowdown in container/fast/ fails the gate too.
FAST_KINDS = ("mix", "conv")
NETWORK = "container_light"


@dataclass(frozen=True)
class Row:
    name: str
    target: str  # "block" or "network"
    batch: int
    kind: str | None = None
    dim: int | None = None
    side: int | None = None
    network: str | None = None
    runtime: str = "reference"  # a bench.runtimes name

    @property
    def short(self) -> str:
        """The kind or network, with the runtime where it is not the reference ("conv", "mix fast")."""
        base = self.name.split("@")[0].split(" ")[0]
        return base if self.runtime == "reference" else f"{base} {self.runtime}"

    def spec(self) -> dict[str, Any]:
        """The row as the worker protocol sends it (JSON)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def row_name(base: str, runtime: str) -> str:
    """Reference rows keep the names baselines were made with; other runtimes add theirs."""
    return base if runtime == "reference" else f"{base} {runtime}"


def block_row(kind: str, runtime: str = "reference") -> Row:
    return Row(row_name(f"{kind}@{STAGE_DIM}x{STAGE_SIDE} b{BLOCK_BATCH}", runtime), "block", BLOCK_BATCH, kind=kind,
               dim=STAGE_DIM, side=STAGE_SIDE, runtime=runtime)


def network_row(runtime: str = "reference") -> Row:
    return Row(row_name(f"{NETWORK} b1", runtime), "network", 1, network=NETWORK, runtime=runtime)


def suite(runtimes: Sequence[str] | None = None) -> list[Row]:
    """The rows the gate measures.

    Default: every block kind at one stage shape and Container-Light at batch 1 on the reference,
    and mix, conv and Container-Light on the fast path. With `runtimes`, every block kind and
    Container-Light on each of them.
    """
    if runtimes is None:
        return ([block_row(kind) for kind in container.BLOCK_KINDS] + [network_row()]
                + [block_row(kind, "fast") for kind in FAST_KINDS] + [network_row("fast")])
    return [row for runtime in dict.fromkeys(runtimes)
            for row in [*(block_row(kind, runtime) for kind in container.BLOCK_KINDS), network_row(runtime)]]


def select_rows(names: Sequence[str] | None, runtimes: Sequence[str] | None = None) -> list[Row]:
    """The rows of suite(runtimes) named in `names` (by name, or by kind / network: every runtime's row)."""
    rows = suite(runtimes)
    if not names:
        return rows
    chosen: list[Row] = []
    for name in names:
        found = [r for r in rows if name in (r.name, r.short, r.short.split(" ")[0])]
        if not found:
            valid = ", ".join(dict.fromkeys(r.short.split(" ")[0] for r in rows))
            raise BenchInputError(f"--rows {name!r}: not in the suite; valid rows: {valid}")
        chosen += [r for r in found if r not in chosen]
    return chosen


def repo_relative(path: Path) -> str:
    """`path` relative to the repository when it lies inside it (for messages), else as it is."""
    with contextlib.suppress(ValueError):
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    return str(path)
