"""Latency of a config at the deployment setting: measured through bench.profile, one at a time per
machine, cached by config + device fingerprint + deployment setting.

The seam is `LatencySource`: anything with `measure(config) -> Latency`. `BenchLatency` times on
this machine (under a machine-wide lock); `CachedLatency` wraps any source with a persistent cache
in the study directory. A latency predictor, or a fake in the tests, is another `LatencySource`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

import bench
from bench.io import write_json
from container import NetworkConfig

from search.space import SearchInputError

# A trial's measurement takes 0.2 s to 1.5 s after warm-up, so 30 trials fit in minutes.
DEFAULT_STOP = bench.StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.2, max_time_s=1.5)


def default_stop(budget_ms: float) -> bench.StopRule:
    """DEFAULT_STOP scaled to the budget: time at least ~12 calls of a network at the budget
    (a 60 ms budget keeps the 1.5 s cap, a 500 ms budget allows 6 s; never more than 30 s)."""
    return bench.StopRule(rel_iqr=DEFAULT_STOP.rel_iqr, min_runs=DEFAULT_STOP.min_runs,
                          min_time_s=DEFAULT_STOP.min_time_s, max_time_s=min(30.0, max(DEFAULT_STOP.max_time_s, 0.012 * budget_ms)))
_WARM_UP = bench.StopRule(rel_iqr=0.5, min_runs=1, min_time_s=0.0, max_time_s=0.3)
LOCK_ENV = "CONTAINER_BENCH_SEARCH_LOCK"
DEFAULT_LOCK = Path("/tmp/container-bench-search-measure.lock")


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
            bench.Options(device=self.device, dtype=self.dtype, threads=self.threads).validate()
        except (bench.BenchInputError, RuntimeError) as e:
            raise SearchInputError(str(e).splitlines()[0] if str(e) else f"--device {self.device}: invalid") from None

    def options(self, stop: bench.StopRule = DEFAULT_STOP) -> bench.Options:
        return bench.Options(device=self.device, dtype=self.dtype, threads=self.threads, stop=stop)

    def fingerprint(self) -> str:
        return bench.fingerprint(self.device, self.threads)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Deployment":
        return cls(**data)


@dataclass(frozen=True)
class Latency:
    """One latency figure for one config, in milliseconds per call of `batch_size` images."""

    median_ms: float
    p90_ms: float
    iqr_ms: float = 0.0
    runs: int = 0
    noisy: bool = False
    source: str = "bench"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Latency":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


class LatencySource(Protocol):
    def measure(self, config: NetworkConfig) -> Latency: ...


class MachineLock:
    """A machine-wide lock (fcntl.flock on a file) so that two workers never measure at once.

    Re-entrant within a process: nested `with lock:` blocks in the same process take it once.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, announce: bool = True):
        self.path = Path(path or os.environ.get(LOCK_ENV) or DEFAULT_LOCK)
        self.announce = announce
        self._guard = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    def __enter__(self) -> "MachineLock":
        self._guard.acquire()
        if self._depth == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        self._guard.release()


class BenchLatency:
    """Times a config on this machine through bench.profile, holding the machine lock throughout."""

    def __init__(self, deployment: Deployment, stop: bench.StopRule = DEFAULT_STOP, lock: MachineLock | None = None):
        self.deployment = deployment
        self.stop = stop
        self.lock = lock or MachineLock()

    _warmed: set[tuple[str, str]] = set()  # (device, dtype) already warmed up in this process

    def measure(self, config: NetworkConfig) -> Latency:
        target = bench.NetworkTarget(config, "search")
        with self.lock:
            warm_key = (self.deployment.device, self.deployment.dtype)
            if warm_key not in BenchLatency._warmed:
                # A process's first measurement runs slow (thread pools, kernel libraries, lazy init);
                # measure once and throw it away, so the first trial is timed like the others.
                bench.profile(target, self.deployment.batch_size, self.deployment.options(_WARM_UP),
                              flops=False, memory=False)
                BenchLatency._warmed.add(warm_key)
            row = bench.profile(target, self.deployment.batch_size, self.deployment.options(self.stop),
                                flops=False, memory=False)
        if row.get("status") != "ok":
            raise MeasurementError(f"status {row.get('status')!r} at batch size {self.deployment.batch_size} "
                                   f"on {self.deployment.device}")
        return Latency(median_ms=float(row["latency_median_ms"]), p90_ms=float(row["latency_p90_ms"]),
                       iqr_ms=float(row["latency_iqr_ms"]), runs=int(row["runs"]), noisy=bool(row["noisy"]),
                       source="bench")


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
        return self.measure_cached(config)[0]

    def measure_cached(self, config: NetworkConfig) -> tuple[Latency, bool]:
        """(latency, whether it came from the cache)."""
        key = self.key(config)
        if key in self.entries:
            self.hits += 1
            return Latency.from_dict(self.entries[key]["latency"]), True
        with self.lock:
            self._load()  # another worker may have measured it meanwhile
            if key in self.entries:
                self.hits += 1
                return Latency.from_dict(self.entries[key]["latency"]), True
            latency = self.source.measure(config)
            self.misses += 1
            self.entries[key] = {"config": config.to_dict(), **self.context, "latency": latency.to_dict(),
                                 "measured_at": time.time()}
            self._save()
        return latency, False

    def remeasure(self, config: NetworkConfig) -> Latency:
        """A fresh measurement, bypassing the cache (kept beside the cached one)."""
        key = self.key(config)
        with self.lock:
            latency = self.source.measure(config)
            self._load()
            entry = self.entries.setdefault(key, {"config": config.to_dict(), **self.context,
                                                  "latency": latency.to_dict(), "measured_at": time.time()})
            entry.setdefault("remeasured", []).append(latency.to_dict() | {"measured_at": time.time()})
            self._save()
        return latency


__all__ = ["BenchLatency", "CachedLatency", "DEFAULT_LOCK", "DEFAULT_STOP", "Deployment", "Latency", "LatencySource",
           "MachineLock", "MeasurementError", "config_key", "default_stop"]
