"""Latency of a config at the deployment setting: measured through bench.profile, one at a time per
machine, cached by config + device fingerprint + deployment setting, optionally screened by a predictor.

The seam is `LatencySource`: anything with `measure(config) -> Latency`. The search asks one source
for every trial's latency, a stack of three:

* `BenchLatency` times on this machine through bench.profile (under a machine-wide lock);
* `CachedLatency` wraps any source with a persistent cache in the study directory;
* `PredictorGate` (with `--predictor`) wraps the cache: a candidate predicted clearly over budget is
  answered with its prediction (`source = "predicted"`) and never measured.

A remote device, or a fake in the tests, is another `LatencySource`.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import sys
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

import bench
from bench.kit import results_root, write_json
from container import NetworkConfig

from search.space import SearchInputError, config_id

# A trial's measurement takes 0.2 s to 1.2 s after warm-up (its median known to +-3%, 95% interval), so 30 trials
# fit in minutes; one whose interval contains the budget is timed for up to as long again (BenchLatency.deciding).
DEFAULT_STOP = bench.StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.2, max_time_s=1.2, rel_interval=0.03)


def default_stop(budget_ms: float) -> bench.StopRule:
    """DEFAULT_STOP scaled to the budget: time at least ~12 calls of a network at the budget
    (a 100 ms budget keeps the 1.2 s cap, a 500 ms budget allows 6 s; never more than 30 s)."""
    return replace(DEFAULT_STOP, max_time_s=min(30.0, max(DEFAULT_STOP.max_time_s, 0.012 * budget_ms)))


DEFAULT_MARGIN = 0.10  # the predictor gate rejects a candidate predicted above budget * (1 + margin)
LOCK_ENV = "CONTAINER_BENCH_SEARCH_LOCK"
LOCK_NAME = "container-bench-search-measure.lock"
LOCKS_DIR = ".locks"  # under the results root, where there is no usable $XDG_RUNTIME_DIR


def default_lock_path() -> Path:
    """Where the measuring lock lives unless `--lock-file` or $CONTAINER_BENCH_SEARCH_LOCK say otherwise: in the
    user's runtime directory ($XDG_RUNTIME_DIR, private to the user, when set and writable), else in a directory
    private to the user under the results root (results/.locks/, created 0700). Never in a directory others can
    write to, such as /tmp, where another user could plant the file or a link in its place."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return Path(runtime) / LOCK_NAME
    return results_root() / LOCKS_DIR / LOCK_NAME


def _private_directory(path: Path) -> None:
    """Create results/.locks/ for this user alone (0700), with a .gitignore so that it never shows in git."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:  # another worker made it meanwhile
        return
    (path / ".gitignore").write_text("*\n")


class MeasurementError(RuntimeError):
    """A config could not be measured (e.g. it does not fit in memory at the deployment setting)."""


@dataclass(frozen=True)
class Deployment:
    """Where and how the network will run: everything a latency depends on besides the config."""

    device: str = "cpu"
    batch_size: int = 1
    image_size: int = 224
    threads: int | None = None  # None: torch's default for this process, resolved at construction
    dtype: str = "fp32"
    # What the user ships (bench.RUNTIMES): the search decides on this runtime's latency. Default: the
    # fast path (container.optimize), not the seed-faithful eager reference that nobody deploys.
    runtime: str = "fast"

    def __post_init__(self) -> None:
        for name, low in (("batch_size", 1), ("image_size", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SearchInputError(f"--{name.replace('_', '-')} {v!r}: must be an integer >= {low}")
        if self.threads is None:
            object.__setattr__(self, "threads", torch.get_num_threads())
        elif isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise SearchInputError(f"--threads {self.threads!r}: must be an integer >= 1")
        try:
            self.options().validate()  # an unknown runtime, a missing package, a combination that makes no sense
        except (bench.BenchInputError, RuntimeError) as e:
            raise SearchInputError(str(e).splitlines()[0] if str(e) else f"--device {self.device}: invalid") from None

    def options(self, stop: bench.StopRule = DEFAULT_STOP) -> bench.Options:
        return bench.Options(device=self.device, dtype=self.dtype, threads=self.threads, runtime=self.runtime,
                             stop=stop)

    def fingerprint(self) -> str:
        return bench.fingerprint(self.device, self.threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Deployment":
        return cls(**data)


@dataclass(frozen=True)
class Latency:
    """One latency figure for one config, in milliseconds per call of `batch_size` images.

    `median_ms` is as measured; `norm_ms` the same at the machine's reference speed (bench.machine), with
    its 95% interval. The search decides on `deciding_ms`: the normalised figure where there is one (a
    custom source or a prediction may give only `median_ms`), so that the budget means the same
    milliseconds whether the machine runs fast or slow at the moment."""

    median_ms: float
    p90_ms: float
    iqr_ms: float = 0.0
    runs: int = 0
    noisy: bool = False
    source: str = "bench"  # who gave the figure: "bench", "predicted", or a custom source's name
    cached: bool = False  # served from the latency cache rather than measured for this request
    predicted_ms: float | None = None  # the predictor gate's figure, when a gate screened this config
    norm_ms: float | None = None
    norm_low_ms: float | None = None
    norm_high_ms: float | None = None
    machine_speed: float | None = None  # norm_ms / median_ms: below 1 the machine ran slower than its reference

    @property
    def deciding_ms(self) -> float:
        return self.norm_ms if self.norm_ms is not None and math.isfinite(self.norm_ms) else self.median_ms

    @classmethod
    def from_stats(cls, stats: bench.LatencyStats, source: str = "bench") -> "Latency":
        calibrated = math.isfinite(stats.norm_ms)
        return cls(median_ms=stats.median_ms, p90_ms=stats.p90_ms, iqr_ms=stats.iqr_ms, runs=stats.runs,
                   noisy=stats.noisy, source=source,
                   **({"norm_ms": stats.norm_ms, "norm_low_ms": stats.norm_low_ms, "norm_high_ms": stats.norm_high_ms,
                       "machine_speed": stats.machine_speed} if calibrated else {}))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Latency":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class LatencySource(Protocol):
    def measure(self, config: NetworkConfig) -> Latency: ...


class Predictor(Protocol):
    """What the predictor gate needs of a latency predictor (search.predictor.LatencyPredictor)."""

    def predict(self, config: NetworkConfig) -> float: ...


class MachineLock:
    """A machine-wide lock (fcntl.flock on a file) so that two workers never measure at once.

    The file is `path`, else $CONTAINER_BENCH_SEARCH_LOCK, else `default_lock_path()`; it is created 0600 and opened
    without following a symbolic link (one in its place is refused with SearchInputError). Re-entrant within a
    process: nested `with lock:` blocks in the same process take it once.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, announce: bool = True):
        given = path or os.environ.get(LOCK_ENV)
        self.path = Path(given) if given else default_lock_path()
        self._default = not given
        # Who chose the file, for an error message: the flag (or a caller), the environment, or the default.
        self._named_by = "--lock-file" if path else f"${LOCK_ENV}" if given else "the measuring lock"
        self.announce = announce
        self._guard = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> "MachineLock":
        self._guard.acquire()
        if self._depth == 0:
            try:
                fd = self._open()
            except BaseException:
                self._guard.release()
                raise
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self.announce:
                        print(f"search: waiting for the measurement lock {self.path} (another process is measuring)",
                              file=sys.stderr, flush=True)
                    fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                self._guard.release()
                raise
            self._fd = fd
        self._depth += 1
        return self

    def _open(self) -> int:
        if self._default and self.path.parent.name == LOCKS_DIR:
            _private_directory(self.path.parent)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP or self.path.is_symlink():
                raise SearchInputError(f"{self._named_by} {self.path}: is a symbolic link; refusing to follow it "
                                       f"(remove it, or give another --lock-file)") from None
            raise

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._guard.release()


class BenchLatency:
    """Times a config on this machine through bench.profile, on the deployment's runtime (bench converts
    the network once per measurement for onnxruntime / openvino; aot finds its package in the cache after the
    first), holding the machine lock throughout.

    bench.measure_latency does every warm-up (a process's first measurement warms up longer), so the
    first trial is timed like the others without a warm-up here."""

    def __init__(self, deployment: Deployment, stop: bench.StopRule = DEFAULT_STOP, lock: MachineLock | None = None):
        self.deployment = deployment
        self.stop = stop
        self.lock = lock or MachineLock()

    def deciding(self, threshold_ms: float) -> "BenchLatency":
        """The same source, timing on while a figure's interval contains `threshold_ms` (for up to the stop
        rule's time again): a candidate near the budget is measured until it is clear which side it is on,
        instead of being decided by one noisy median."""
        stop = replace(self.stop, decide_ms=threshold_ms, decide_extra_s=self.stop.max_time_s)
        return BenchLatency(self.deployment, stop, self.lock)

    def measure(self, config: NetworkConfig) -> Latency:
        return measure_target(bench.NetworkTarget(config, "search"), self.deployment, self.stop, self.lock)


def measure_target(target: Any, deployment: Deployment, stop: bench.StopRule,
                   lock: AbstractContextManager[Any]) -> Latency:
    """One bench.profile latency (no FLOPs, no memory) of a config or a part, under the machine lock."""
    d = deployment
    with lock:
        result = bench.profile(target, d.batch_size, d.options(stop), flops=False, memory=False)
    if result.status != "ok" or result.latency is None:
        # "mismatch" (the runtime computes something else) and "export_failed" (it cannot convert the
        # network) come with bench's one-line reason; the trial fails with it and the search goes on.
        reason = f": {result.reason}" if result.reason else ""
        raise MeasurementError(f"status {result.status!r} at batch size {d.batch_size} on {d.device} "
                               f"with runtime {d.runtime}{reason}")
    return Latency.from_stats(result.latency)


def config_key(config: NetworkConfig, context: dict[str, Any]) -> str:
    """A stable id of (config, fingerprint, deployment setting)."""
    text = json.dumps({"config": config.to_dict(), **context}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CachedLatency:
    """A cache in front of any LatencySource, persisted (atomically) as JSON in the study directory.

    A repeated architecture is never measured again. Look-up and store happen under the machine
    lock, re-reading the file first, so that workers sharing the file add to it instead of
    overwriting each other.
    """

    def __init__(self, source: LatencySource, path: str | os.PathLike | None, context: dict[str, Any],
                 lock: MachineLock | None = None):
        self.source = source
        self.path = Path(path) if path is not None else None
        self.context = dict(context)
        self.lock = lock or getattr(source, "lock", None) or MachineLock()
        self.entries: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # an unreadable cache is only a cache: measure again
        self.entries.update(data.get("entries", {}))

    def _save(self) -> None:
        if self.path is not None:
            write_json(self.path, {"version": 1, "entries": self.entries})

    def key(self, config: NetworkConfig) -> str:
        return config_key(config, self.context)

    def lookup(self, config: NetworkConfig) -> Latency | None:
        entry = self.entries.get(self.key(config))
        return Latency.from_dict(entry["latency"]) if entry else None

    def measure(self, config: NetworkConfig) -> Latency:
        """The cached latency (`cached=True`), or a new measurement of `source`, stored. A prediction
        (`source = "predicted"`, from a gate behind the cache) is passed on but never stored."""
        key = self.key(config)
        if key in self.entries:
            self.hits += 1
            return replace(Latency.from_dict(self.entries[key]["latency"]), cached=True)
        with self.lock:
            self._load()  # another worker may have measured it meanwhile
            if key in self.entries:
                self.hits += 1
                return replace(Latency.from_dict(self.entries[key]["latency"]), cached=True)
            latency = self.source.measure(config)
            if latency.source == "predicted":
                return latency
            self.misses += 1
            self.entries[key] = {"config": config.to_dict(), **self.context, "latency": latency.to_dict(),
                                 "measured_at": time.time()}
            self._save()
        return latency

    def remeasure(self, config: NetworkConfig, source: LatencySource | None = None) -> Latency:
        """A fresh measurement by `source` (default: this cache's), bypassing the cache (kept beside the
        cached one)."""
        key = self.key(config)
        with self.lock:
            latency = (source or self.source).measure(config)
            self._load()
            entry = self.entries.setdefault(key, {"config": config.to_dict(), **self.context,
                                                  "latency": latency.to_dict(), "measured_at": time.time()})
            entry.setdefault("remeasured", []).append(latency.to_dict() | {"measured_at": time.time()})
            self._save()
        return latency


class PredictedLatency:
    """A LatencySource that only predicts (source = "predicted"): nothing is measured."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def measure(self, config: NetworkConfig) -> Latency:
        ms = self.predictor.predict(config)
        return Latency(median_ms=ms, p90_ms=ms, source="predicted", predicted_ms=ms)


class PredictorGate:
    """The search's one predictor screening, a LatencySource in front of `real` (the study's cache).

    A candidate predicted above `budget * (1 + margin)` is answered with its prediction
    (`source = "predicted"`, over budget, so never feasible) and not measured; every other one is
    measured by `real`, its prediction kept in `predicted_ms`. A config measured for real before
    (by this gate, or found in the cache behind it) is never screened again."""

    def __init__(self, predictor: Predictor, real: LatencySource, budget_ms: float, margin: float = DEFAULT_MARGIN):
        if not margin >= 0:
            raise SearchInputError(f"--predictor-margin {margin}: must be >= 0")
        self.predictor, self.real, self.budget_ms, self.margin = predictor, real, budget_ms, margin
        self.rejected = 0  # answered with a prediction, unmeasured
        self.measured = 0  # passed on to `real`
        self._real: set[str] = set()

    @property
    def threshold_ms(self) -> float:
        return self.budget_ms * (1 + self.margin)

    def _measured_before(self, config: NetworkConfig) -> bool:
        if config_id(config) in self._real:
            return True
        return isinstance(self.real, CachedLatency) and self.real.lookup(config) is not None

    def measure(self, config: NetworkConfig) -> Latency:
        predicted = None
        if not self._measured_before(config):
            predicted = self.predictor.predict(config)
            if predicted > self.threshold_ms:
                self.rejected += 1
                return Latency(median_ms=predicted, p90_ms=predicted, source="predicted", predicted_ms=predicted)
        latency = self.real.measure(config)
        self._real.add(config_id(config))
        self.measured += 1
        return replace(latency, predicted_ms=predicted) if predicted is not None else latency


__all__ = ["BenchLatency", "CachedLatency", "DEFAULT_MARGIN", "DEFAULT_STOP", "Deployment", "Latency",
           "LatencySource", "MachineLock", "MeasurementError", "PredictedLatency", "Predictor", "PredictorGate",
           "config_key", "default_lock_path", "default_stop", "measure_target"]
