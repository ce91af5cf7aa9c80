"""What the regression gate measures: a suite of rows, each a target at a batch on a runtime, and how a
row's time is normalised. Suites are files (bench/regress/suite_file.py); this module holds the rows."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from bench.env import REPO_ROOT
from bench.kit import results_root
from bench.targets import BenchInputError

# How a normalised time is made: the calibration workload and the interleaving (two untimed calls of
# a workload before each of its timed calls, row and calibration in turn). Figures made by another
# method are not comparable; baselines and history records carry it.
METHOD = "interleaved-calls/gemm768+dwconv128x112x5/v1"

DEFAULT_ROUNDS = 8
DEFAULT_UPDATE_ROUNDS = 16  # a baseline is measured once and compared with many times: make it precise
DEFAULT_THREADS = 1  # on a shared CI box, more intra-op threads than free cores make timings meaningless
DEFAULT_PAIRS = 3  # timed row calls per round are pairs + 1, each between calibration calls
SUITES_DIR = Path(__file__).resolve().parent / "suites"
DEFAULT_SUITE_FILE = SUITES_DIR / "default.yaml"  # the project's own rows: `make regress`
HISTORY_PATH = results_root() / "runs" / "regress_history.jsonl"  # every run's figures, one line per row and side


@dataclass(frozen=True)
class Row:
    """One measured row. `target` is "block" (kind at dim x side), "network" (a registered name, or a config
    file whose content is in `config` as JSON) or "model" (a module:callable with its `input_shape`)."""

    name: str
    target: str
    batch: int
    kind: str | None = None
    dim: int | None = None
    side: int | None = None
    heads: int | None = None
    kernel_size: int | None = None
    network: str | None = None  # a registered name, or the config file as the suite names it
    config: str | None = None  # the config file's NetworkConfig as JSON: both sides build the same network
    model: str | None = None
    input_shape: tuple[int, ...] | None = None
    runtime: str = "reference"  # a bench.runtimes name
    dtype: str = "fp32"
    threads: int | None = None  # None: the suite's threads

    @property
    def short(self) -> str:
        """The kind, network or model, with the runtime where it is not the reference ("conv", "mix fast")."""
        base = self.name.split("@")[0].split(" ")[0]
        return base if self.runtime == "reference" else f"{base} {self.runtime}"

    def spec(self) -> dict[str, Any]:
        """The row as the worker protocol sends it and baselines store it (JSON)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    def definition(self, threads: int) -> dict[str, Any]:
        """What the row measures, with every default filled in: two rows with equal definitions time the same."""
        return definition(self.spec(), threads)


def definition(spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """A stored row spec (possibly from an older baseline, which left defaults out) with its defaults filled in."""
    filled = {"runtime": "reference", "dtype": "fp32", "threads": threads} | dict(spec)
    filled.pop("name", None)
    return filled


def default_name(base: str, batch: int, runtime: str = "reference", dtype: str = "fp32",
                 threads: int | None = None) -> str:
    """"conv@320x14 b4", "container_light b1 fast", "best.json b1 openvino bf16 t2": reference rows keep the
    names baselines were made with; other runtimes, dtypes and thread counts add theirs."""
    parts = [f"{base} b{batch}"]
    if runtime != "reference":
        parts.append(runtime)
    if dtype != "fp32":
        parts.append(dtype)
    if threads is not None:
        parts.append(f"t{threads}")
    return " ".join(parts)


def block_row(kind: str, dim: int, side: int, batch: int, runtime: str = "reference") -> Row:
    return Row(default_name(f"{kind}@{dim}x{side}", batch, runtime), "block", batch, kind=kind, dim=dim, side=side,
               runtime=runtime)


def on_runtimes(rows: Sequence[Row], runtimes: Sequence[str]) -> list[Row]:
    """Every row on each of `runtimes` (`--runtime`), renamed for it; rows that become equal are kept once."""
    out: dict[str, Row] = {}
    for runtime in dict.fromkeys(runtimes):
        for row in rows:
            name = renamed_for(row, runtime)
            out.setdefault(name, replace(row, name=name, runtime=runtime))
    return list(out.values())


def renamed_for(row: Row, runtime: str) -> str:
    """The row's name with its runtime word swapped for `runtime` (none for the reference)."""
    words = row.name.split(" ")
    if row.runtime != "reference" and row.runtime in words:
        at = words.index(row.runtime)
        words.pop(at)
    else:
        batch_word = f"b{row.batch}"
        at = words.index(batch_word) + 1 if batch_word in words else len(words)
    if runtime != "reference":
        words.insert(at, runtime)
    return " ".join(words)


def select_rows(rows: Sequence[Row], names: Sequence[str] | None) -> list[Row]:
    """The rows named in `names` (`--rows`): by name, or by kind / network / model (every runtime's row)."""
    if not names:
        return list(rows)
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
