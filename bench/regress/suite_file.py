"""Suite files: the rows a gate measures, in YAML (or JSON), checked whole before anything is measured.

    name: my-suite          # optional (default: the file's stem); baselines are kept per suite and machine:
                            # results/baselines/<name>/<machine fingerprint>.json
    threads: 1              # optional defaults for every row: threads, batch, runtime, dtype
    rows:
      - {block: mix, dim: 320, side: 14, batch: 4}                   # a block kind at a shape
      - {network: container_light, runtime: fast}                    # a registered network
      - {network: results/search/my-study/best.json, batch: 8}       # a config file (relative to this file)
      - {model: my_models:tiny_net, input_shape: [3, 64, 64]}        # any nn.Module from a module:callable
      - {block: attn, dim: 64, side: 56, heads: 2, kernel_size: 3, dtype: bf16, threads: 2, name: attn-s1}

A row's name defaults to "<target> b<batch>" plus its runtime, dtype and threads where they are not the
defaults ("mix@320x14 b4 fast"). A config file is read here, once, and both sides of `--against` build it
with their own code: the gate compares code, not architectures. A `module:callable` is imported by each
side from its own tree, so a slower block in another revision's module is what the gate sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import container
from bench.kit import read_document
from bench.options import DTYPES, Options
from bench.regress.rows import DEFAULT_ROUNDS, DEFAULT_SUITE_FILE, DEFAULT_THREADS, HISTORY_PATH, Row, default_name
from bench.regress.statistics import DEFAULT_ALPHA, DEFAULT_MIN_EFFECT
from bench.runtimes import RUNTIMES
from bench.targets import BenchInputError, ModuleTarget, NetworkTarget

TARGET_KEYS = ("block", "network", "model")
ROW_KEYS = {
    "block": ("dim", "side", "heads", "kernel_size"),
    "network": (),
    "model": ("input_shape",),
}
COMMON_KEYS = ("name", "batch", "runtime", "dtype", "threads")
DEFAULT_KEYS = ("threads", "batch", "runtime", "dtype")
SUITE_KEYS = ("name", "rows", *DEFAULT_KEYS)


@dataclass(frozen=True)
class Suite:
    name: str  # keys its baselines
    rows: tuple[Row, ...]
    threads: int  # the rows' default thread count; with the machine, it keys the baseline file
    path: Path | None = None


def load_suite(path: str | Path = DEFAULT_SUITE_FILE, threads: int | None = None) -> Suite:
    """The suite in `path`, every row checked (runtimes, dtypes, shapes, config files, importable models).

    `threads` (--threads) replaces the suite's default thread count; rows with their own keep theirs."""
    path = Path(path)
    doc = read_document(path, "--suite")
    where = f"suite {path}"
    if not isinstance(doc, Mapping):
        raise BenchInputError(f"{where}: expected a mapping with a 'rows' list, got {type(doc).__name__}")
    _no_unknown(doc, SUITE_KEYS, where)
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name.strip() or "/" in name or name.startswith("."):
        raise BenchInputError(f"{where}: name={name!r}: must be a non-empty file name (it names the baseline folder)")
    defaults = {k: doc[k] for k in DEFAULT_KEYS if k in doc}
    suite_threads = threads or _positive_int(defaults.pop("threads", DEFAULT_THREADS), f"{where}: threads")
    rows_doc = doc.get("rows")
    if not isinstance(rows_doc, list) or not rows_doc:
        raise BenchInputError(f"{where}: rows: must be a non-empty list of rows")
    rows: list[Row] = []
    for i, entry in enumerate(rows_doc, 1):
        row = _row(entry, defaults, path.parent, f"{where}: row {i}")
        if any(r.name == row.name for r in rows):
            raise BenchInputError(f"{where}: row {i}: name={row.name!r}: another row has this name; give one a name")
        rows.append(row)
    return Suite(name.strip(), tuple(rows), suite_threads, path)


@dataclass(frozen=True)
class GateConfig:
    """One gate run's settings, made once (by `python -m bench regress`, bench/regress/evaluation.py or a
    script) and passed to every step of it: run_gate, gate_against, update_baseline, measure_sides, compare,
    baseline_document. What it is compared with (a baseline file, a revision) is an argument of the run."""

    suite: Suite = field(default_factory=load_suite)  # default: the project's own suite
    rows: Sequence[Row] = ()  # the rows measured (--rows, --runtime); empty: every row of the suite
    rounds: int = DEFAULT_ROUNDS  # timed rounds per row (`--update` uses DEFAULT_UPDATE_ROUNDS)
    min_effect: float = DEFAULT_MIN_EFFECT  # the smallest slowdown that fails
    alpha: float = DEFAULT_ALPHA  # the one-sided Mann-Whitney U test's level
    history: Path | None = HISTORY_PATH  # the history file each run appends to; None: none
    console: Any = None  # a rich Console for progress and notes; None: quiet

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows or self.suite.rows))

    @property
    def threads(self) -> int:
        """The intra-op threads of the rows without their own; with the machine, it keys the baseline."""
        return self.suite.threads


def _row(entry: Any, defaults: Mapping[str, Any], base: Path, where: str) -> Row:
    if not isinstance(entry, Mapping):
        raise BenchInputError(f"{where}: expected a mapping such as {{block: mix, dim: 320, side: 14}}")
    targets = [k for k in TARGET_KEYS if k in entry]
    if len(targets) != 1:
        raise BenchInputError(f"{where}: needs exactly one of {', '.join(TARGET_KEYS)}"
                              + (f" (has {', '.join(targets)})" if targets else ""))
    target = targets[0]
    where = f"{where} ({entry.get('name') or entry[target]})"
    _no_unknown(entry, (target, *ROW_KEYS[target], *COMMON_KEYS), where)
    values = dict(defaults) | dict(entry)
    batch = _positive_int(values.get("batch", 1), f"{where}: batch")
    runtime = values.get("runtime", "reference")
    if runtime not in RUNTIMES:
        raise BenchInputError(f"{where}: runtime={runtime!r}: unknown runtime; valid runtimes: {', '.join(RUNTIMES)}")
    dtype = values.get("dtype", "fp32")
    if dtype not in DTYPES:
        raise BenchInputError(f"{where}: dtype={dtype!r}: unknown dtype; valid dtypes: {', '.join(DTYPES)}")
    threads = _positive_int(entry["threads"], f"{where}: threads") if "threads" in entry else None
    try:
        Options(runtime=runtime, dtype=dtype, threads=threads).validate()  # e.g. bf16 with onnxruntime
    except BenchInputError as e:
        raise BenchInputError(f"{where}: {str(e).removeprefix('--')}") from None
    settings = dict(batch=batch, runtime=runtime, dtype=dtype, threads=threads)
    explicit_name = entry.get("name")
    if explicit_name is not None and (not isinstance(explicit_name, str) or not explicit_name.strip()):
        raise BenchInputError(f"{where}: name={explicit_name!r}: must be a non-empty string")

    def named(label: str) -> str:
        return explicit_name.strip() if explicit_name else default_name(label, batch, runtime, dtype, threads)

    if target == "block":
        return _block_row(values, where, named, settings)
    if target == "network":
        return _network_row(values["network"], base, where, named, settings)
    return _model_row(values, where, named, settings)


def _block_row(values: Mapping[str, Any], where: str, named, settings: dict[str, Any]) -> Row:
    kind = values["block"]
    if kind not in container.BLOCK_KINDS:
        raise BenchInputError(f"{where}: block={kind!r}: unknown block kind; valid kinds: "
                              f"{', '.join(container.BLOCK_KINDS)}")
    for key in ("dim", "side"):
        if key not in values:
            raise BenchInputError(f"{where}: {key}: missing (a block row needs dim and side)")
    dim, side = _positive_int(values["dim"], f"{where}: dim"), _positive_int(values["side"], f"{where}: side")
    heads = _positive_int(values["heads"], f"{where}: heads") if "heads" in values else None
    kernel = _positive_int(values["kernel_size"], f"{where}: kernel_size") if "kernel_size" in values else None
    if heads is not None and dim % heads:
        raise BenchInputError(f"{where}: heads={heads}: dim={dim} is not divisible by it")
    if kernel is not None and kernel % 2 == 0:
        raise BenchInputError(f"{where}: kernel_size={kernel}: must be odd so the window is centred")
    return Row(named(f"{kind}@{dim}x{side}"), "block", kind=kind, dim=dim, side=side, heads=heads,
               kernel_size=kernel, **settings)


def _network_row(spec: Any, base: Path, where: str, named, settings: dict[str, Any]) -> Row:
    if not isinstance(spec, str) or not spec.strip():
        raise BenchInputError(f"{where}: network={spec!r}: a registered name or a config file path")
    if spec in container.list_models():
        return Row(named(spec), "network", network=spec, **settings)
    file = Path(spec) if Path(spec).is_absolute() else base / spec
    if not file.is_file():
        raise BenchInputError(f"{where}: network={spec!r}: neither a registered network "
                              f"({', '.join(container.list_models())}) nor a config file ({file} does not exist)")
    try:
        config = NetworkTarget.from_file(file).config
    except BenchInputError as e:
        raise BenchInputError(f"{where}: network: {e}") from None
    return Row(named(spec), "network", network=spec, config=config.to_json(), **settings)


def _model_row(values: Mapping[str, Any], where: str, named, settings: dict[str, Any]) -> Row:
    spec = values["model"]
    shape = values.get("input_shape")
    if (not isinstance(shape, (list, tuple)) or not shape
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
        raise BenchInputError(f"{where}: input_shape={shape!r}: one sample's shape as a list of positive "
                              f"integers, e.g. [3, 224, 224]")
    try:
        ModuleTarget.from_callable(str(spec), tuple(shape))  # importable, and returns an nn.Module
    except BenchInputError as e:
        raise BenchInputError(f"{where}: model: {e}") from None
    return Row(named(str(spec)), "model", model=str(spec), input_shape=tuple(shape), **settings)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchInputError(f"{where}={value!r}: must be an integer >= 1")
    return value


def _no_unknown(mapping: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise BenchInputError(f"{where}: unknown key {unknown[0]!r}; valid keys here: {', '.join(allowed)}")
