"""A latency predictor: a lookup table of measured parts, summed and calibrated on whole networks.

Measuring a candidate costs a second or more; hardware-aware NAS avoids most of that with per-operator
lookup tables (FBNet, Once-for-All) or learned predictors (nn-Meter). Here:

* the **table** holds the latency of every *part* a network is made of, each measured once through
  `bench.profile` at its exact shape and the deployment setting (runtime included: a part timed on one
  runtime is never used for another, and the calibration is per setting too): a block (kind, dim, heads, kernel,
  MLP ratio, tokens per side), a patch embedding (in/out channels, patch size, input side) and the
  classifier head. Fields a part's cost cannot depend on are normalised away (the kernel of an
  attention block, the heads of a conv block), so the table stays small (~300 entries for the
  default space);
* the **calibration** is a least-squares fit, in relative error, of measured whole networks on the
  table sums: `latency ~ a * sum(blocks) + c * sum(embeddings + head) + b`. A network's parts run
  back to back, with warm caches between calls when timed alone and not in the network, so the
  plain sum is off by a few percent to a few tens of percent; the fit removes the systematic part;
* both are cached in `results/predictor/<fingerprint>.json` (bench.fingerprint: CPU/GPU model,
  cores, torch version, device, threads), written atomically and merged under the machine lock, so
  workers on one machine share one table and a different machine never reads it.

The search screens candidates with it through `search.latency.PredictorGate`; the parts themselves are
in `search.parts`.

`python -m search predictor-report` publishes the predictor's accuracy on a fresh sample of
architectures that were never used for fitting; `python -m search predictor-bench` compares trials
per minute with and without the gate at the same budget.
Every figure in the table and the fit is at the machine's reference speed (search.latency.Latency.deciding_ms).
"""
from __future__ import annotations

import json
import math
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

import bench
from bench.kit import write_json
from container import NetworkConfig

from search.latency import DEFAULT_STOP, Deployment, Latency, MachineLock, MeasurementError, measure_target
from search.parts import Part, network_parts
from search.space import SearchInputError, SearchSpace, config_id, sample_configs
from search.settings import PREDICTOR_DIR

FORMAT = 1
# One table entry: a part runs in 0.05-10 ms at batch 1, so 0.1 s of timing is >= 10 calls.
TABLE_STOP = bench.StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.1, max_time_s=1.0)
FIT_SEED = 1000  # the calibration networks; the accuracy report draws from other seeds and excludes them
DEFAULT_FIT = 24


class NotCalibratedError(RuntimeError):
    """predict() was asked before the predictor was calibrated for this deployment setting."""


@dataclass(frozen=True)
class NetworkMeasurement:
    """A whole network measured for real in several rounds (LatencyPredictor.measure_networks): the figures of its
    quietest round (lowest median at the reference speed), and each round's median."""

    median_ms: float
    p90_ms: float
    iqr_ms: float
    noisy: bool
    rounds_ms: list[float]


# --- the predictor -----------------------------------------------------------------------------------


FEATURES = ("blocks_ms", "other_ms", "one")


@dataclass
class Calibration:
    """latency ~ coef . (sum of block latencies, sum of embedding + head latencies, 1)."""

    coef: list[float]
    n: int
    fit_mape: float
    fit_configs: list[str]  # config_id of each fitting network
    fit_measured_ms: list[float]
    fitted_at: float

    def apply(self, features: Sequence[float]) -> float:
        return float(np.dot(self.coef, features))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def fit_calibration(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least squares in relative error (each row divided by its measured latency), coefficients >= 0;
    fitted again without the networks more than max(25%, 3 x the median) off (a measurement that met
    interference in every round), as long as at least three quarters remain."""
    from scipy.optimize import nnls

    a = features / measured[:, None]
    coef, _ = nnls(a, np.ones(len(measured)))
    err = np.abs(a @ coef - 1)
    keep = err <= max(0.25, 3 * float(np.median(err)))
    if 0 < (~keep).sum() and keep.sum() >= max(len(FEATURES) + 1, 0.75 * len(measured)):
        coef, _ = nnls(a[keep], np.ones(int(keep.sum())))
    return coef


class LatencyPredictor:
    """The lookup table and its calibration for one deployment setting on this machine."""

    def __init__(self, deployment: Deployment, *, stop: bench.StopRule = TABLE_STOP,
                 network_stop: bench.StopRule = DEFAULT_STOP, lock: AbstractContextManager[Any] | None = None,
                 path: str | Path | None = None,
                 directory: str | Path = PREDICTOR_DIR, on_measure: Callable[[int, int, str], None] | None = None,
                 passes: int = 2, extra_passes: int = 2, agree: float = 0.15, network_rounds: int = 2):
        self.deployment = deployment
        self.passes, self.extra_passes, self.agree = max(1, passes), max(0, extra_passes), agree
        self.network_rounds = max(1, network_rounds)
        self.stop, self.network_stop = stop, network_stop
        self.lock = lock if lock is not None else MachineLock()
        self.fingerprint = deployment.fingerprint()
        self.path = Path(path) if path is not None else Path(directory) / f"{self.fingerprint}.json"
        self.on_measure = on_measure
        self.entries: dict[str, dict[str, Any]] = {}
        self.calibrations: dict[str, dict[str, Any]] = {}
        self.measured_parts = 0  # table entries measured by this process
        self._load()

    # --- persistence ---------------------------------------------------------------------------------

    def setting_key(self) -> str:
        return json.dumps(self.deployment.to_dict(), sort_keys=True)

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return  # a cache: measure again
        if data.get("fingerprint") != self.fingerprint:
            return
        self.entries.update(data.get("entries", {}))
        self.calibrations.update(data.get("calibrations", {}))

    def _save(self) -> None:
        with self.lock:
            mine_entries, mine_cal = dict(self.entries), dict(self.calibrations)
            self._load()  # another worker may have added entries meanwhile: merge, do not overwrite
            self.entries.update(mine_entries)
            self.calibrations.update(mine_cal)
            write_json(self.path, {"format": FORMAT, "fingerprint": self.fingerprint,
                                   "environment": bench.environment(self.deployment.device, self.deployment.threads),
                                   "entries": self.entries, "calibrations": self.calibrations})

    # --- the table -----------------------------------------------------------------------------------

    def missing(self, configs: Iterable[NetworkConfig]) -> list[Part]:
        out: dict[str, Part] = {}
        for config in configs:
            for part, _ in network_parts(config):
                key = part.key(self.deployment)
                if key not in self.entries and key not in out:
                    out[key] = part
        return list(out.values())

    def measure_parts(self, parts: Sequence[Part]) -> None:
        """Measure table entries through bench.profile, under the machine lock, in `passes` sweeps over
        the parts (plus up to `extra_passes` more for a part whose sweeps disagree by more than `agree`);
        an entry is the lowest median of its sweeps. A part timed while something else held a core
        reads slow, never fast, and another sweep seconds later rarely meets the same interference."""
        if not parts:
            return
        d = self.deployment
        with self.lock:
            self._load()
            todo = [p for p in parts if p.key(d) not in self.entries]
            if not todo:
                return
            samples: dict[str, list[Latency]] = {p.key(d): [] for p in todo}
            total = len(todo) * self.passes
            done = 0
            sweep = list(todo)
            for n in range(self.passes + self.extra_passes):
                if n >= self.passes:  # only parts whose sweeps disagree
                    sweep = [p for p in todo if _spread(samples[p.key(d)]) > 1 + self.agree]
                    total += len(sweep)
                for part in sweep:
                    if self.on_measure:
                        self.on_measure(done, total, part.label())
                    try:
                        samples[part.key(d)].append(
                            measure_target(part.target(), part.measured_at(d), self.stop, self.lock))
                    except MeasurementError as e:
                        raise MeasurementError(f"{part.label()}: {e}") from None
                    done += 1
            for part in todo:
                runs = samples[part.key(d)]
                best = min(runs, key=lambda lat: lat.deciding_ms)
                self.entries[part.key(d)] = {
                    "part": asdict(part), "median_ms": best.deciding_ms, "p90_ms": best.p90_ms, "iqr_ms": best.iqr_ms,
                    "runs": best.runs, "noisy": best.noisy, "sweeps_ms": [lat.deciding_ms for lat in runs],
                    "measured_at": time.time()}
                self.measured_parts += 1
            if self.on_measure:
                self.on_measure(total, total, "")
            self._save()

    def sums(self, config: NetworkConfig) -> dict[str, float]:
        """The table sums of a network (measuring any part not in the table yet)."""
        self.measure_parts(self.missing([config]))
        blocks = other = 0.0
        for part, count in network_parts(config):
            ms = self.entries[part.key(self.deployment)]["median_ms"] * count
            if part.part == "block":
                blocks += ms
            else:
                other += ms
        return {"blocks_ms": blocks, "other_ms": other}

    def features(self, config: NetworkConfig) -> np.ndarray:
        s = self.sums(config)
        return np.array([s["blocks_ms"], s["other_ms"], 1.0])

    def raw_sum(self, config: NetworkConfig) -> float:
        s = self.sums(config)
        return s["blocks_ms"] + s["other_ms"]

    # --- calibration ---------------------------------------------------------------------------------

    @property
    def calibration(self) -> Calibration | None:
        data = self.calibrations.get(self.setting_key())
        return Calibration.from_dict(data) if data else None

    def measure_network(self, config: NetworkConfig) -> Latency:
        """A whole network, for real, through bench.profile under the same lock."""
        return measure_target(bench.NetworkTarget(config, "search"), self.deployment, self.network_stop, self.lock)

    def measure_networks(self, configs: Sequence[NetworkConfig], rounds: int = 2,
                         on_progress: Callable[[int, int], None] | None = None) -> list[NetworkMeasurement]:
        """Whole networks for real, in `rounds` sweeps over all of them; each network's latency is its
        lowest median (as for the table: interference only ever adds time). Per-round figures kept."""
        per: list[list[Latency]] = [[] for _ in configs]
        total = len(configs) * max(1, rounds)
        with self.lock:
            for r in range(max(1, rounds)):
                for i, config in enumerate(configs):
                    if on_progress:
                        on_progress(r * len(configs) + i, total)
                    per[i].append(self.measure_network(config))
        if on_progress:
            on_progress(total, total)
        out = []
        for runs in per:
            best = min(runs, key=lambda lat: lat.deciding_ms)
            out.append(NetworkMeasurement(median_ms=best.deciding_ms, p90_ms=best.p90_ms, iqr_ms=best.iqr_ms,
                                          noisy=best.noisy, rounds_ms=[lat.deciding_ms for lat in runs]))
        return out

    def calibrate(self, configs: Sequence[NetworkConfig], measured_ms: Sequence[float] | None = None) -> Calibration:
        """Fit the calibration on these networks (measured now unless their latencies are given)."""
        if len(configs) < len(FEATURES) + 1:
            raise SearchInputError(f"calibration: needs at least {len(FEATURES) + 1} networks, got {len(configs)}")
        self.measure_parts(self.missing(configs))
        if measured_ms is None:
            measured_ms = [m.median_ms for m in self.measure_networks(configs, self.network_rounds)]
        x = np.stack([self.features(c) for c in configs])
        y = np.asarray(measured_ms, dtype=float)
        coef = fit_calibration(x, y)
        pred = x @ coef
        cal = Calibration(coef=[float(c) for c in coef], n=len(configs),
                          fit_mape=float(np.mean(np.abs(pred - y) / y) * 100),
                          fit_configs=[config_id(c) for c in configs], fit_measured_ms=[float(v) for v in y],
                          fitted_at=time.time())
        self.calibrations[self.setting_key()] = cal.to_dict()
        self._save()
        return cal

    def ensure_calibrated(self, space: SearchSpace, n: int = DEFAULT_FIT, seed: int = FIT_SEED,
                          on_measure: Callable[[int, int, str], None] | None = None) -> Calibration:
        """The cached calibration for this setting, or a new one on `n` networks sampled from `space` (`on_measure`:
        told of each part measured for it, in place of the predictor's own)."""
        cal = self.calibration
        if cal is not None:
            return cal
        configs = sample_configs(space, n, seed, self.deployment.image_size)
        previous, self.on_measure = self.on_measure, on_measure or self.on_measure
        try:
            return self.calibrate(configs)
        finally:
            self.on_measure = previous

    # --- prediction ----------------------------------------------------------------------------------

    def predict(self, config: NetworkConfig) -> float:
        cal = self.calibration
        if cal is None:
            raise NotCalibratedError(f"the predictor at {self.path} has no calibration for this deployment setting; "
                                     f"call ensure_calibrated(space) first")
        return cal.apply(self.features(config))


def _spread(runs: list[Latency]) -> float:
    values = [lat.deciding_ms for lat in runs]
    return max(values) / min(values) if values and min(values) > 0 else math.inf


__all__ = ["Calibration", "DEFAULT_FIT", "FIT_SEED", "LatencyPredictor", "NetworkMeasurement", "NotCalibratedError",
           "TABLE_STOP", "fit_calibration"]
