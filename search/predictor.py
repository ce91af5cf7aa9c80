"""A latency predictor: a lookup table of measured parts, summed and calibrated on whole networks.

Measuring a candidate costs a second or more; hardware-aware NAS avoids most of that with per-operator
lookup tables (FBNet, Once-for-All) or learned predictors (nn-Meter). Here:

* the **table** holds the latency of every *part* a network is made of, each measured once through
  `bench.profile` at its exact shape and the deployment setting: a block (kind, dim, heads, kernel,
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

`PredictorGate` is a `LatencySource` for the search: a candidate predicted above
`budget * (1 + margin)` is rejected without measuring it (its latency is recorded with
`source = "predicted"`); every other candidate, and therefore every candidate that can end up in the
ranking, is measured for real.

`python -m search predictor-report` publishes the predictor's accuracy on a fresh sample of
architectures that were never used for fitting; `python -m search predictor-bench` compares trials
per minute with and without the gate at the same budget.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch.nn as nn

import bench
from bench.io import write_json
from container import NetworkConfig
from container.kinds import block_kind
from container.networks import PatchEmbed

from search.latency import DEFAULT_STOP, BenchLatency, Deployment, Latency, LatencySource, MachineLock, MeasurementError
from search.sampling import config_id, sample_configs
from search.space import SearchInputError, SearchSpace

FORMAT = 1
PREDICTOR_DIR = Path("results/predictor")
# One table entry: a part runs in 0.05-10 ms at batch 1, so 0.1 s of timing is >= 10 calls.
TABLE_STOP = bench.StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.1, max_time_s=1.0)
FIT_SEED = 1000  # the calibration networks; the accuracy report draws from other seeds and excludes them
DEFAULT_FIT = 24
DEFAULT_MARGIN = 0.10


class NotCalibratedError(RuntimeError):
    """predict() was asked before the predictor was calibrated for this deployment setting."""


# --- parts ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    """One measured piece of a network at its shape. `side`: tokens per side of its output (an
    embedding's input side is `side * patch_size`)."""

    part: str  # "block", "embed" or "head"
    dim: int
    side: int
    kind: str = ""
    heads: int = 0
    kernel_size: int = 0
    mlp_ratio: float = 0.0
    mixing: str = ""
    in_chans: int = 0
    patch_size: int = 0
    num_classes: int = 0

    @classmethod
    def block(cls, kind: str, dim: int, heads: int, kernel_size: int, mlp_ratio: float, side: int,
              mixing: str) -> "Part":
        k = block_kind(kind)
        return cls("block", dim, side, kind=kind,
                   heads=heads if (k.dynamic or k.static == "mhmlp") else 0,  # conv / mlp blocks: no heads
                   kernel_size=kernel_size if k.static == "conv" else 0,  # only a depthwise conv has a kernel
                   mlp_ratio=float(mlp_ratio), mixing=mixing if k.mixed else "")

    def label(self) -> str:
        if self.part == "block":
            extra = (f"/h{self.heads}" if self.heads else "") + (f"/k{self.kernel_size}" if self.kernel_size else "")
            return f"block:{self.kind}@{self.dim}x{self.side}{extra}/r{self.mlp_ratio:g}{'/' + self.mixing if self.mixing else ''}"
        if self.part == "embed":
            return f"embed:{self.in_chans}->{self.dim}/p{self.patch_size}@{self.side * self.patch_size}"
        return f"head:{self.dim}x{self.side}->{self.num_classes}"

    def key(self, deployment: Deployment) -> str:
        d = deployment
        return f"{self.label()}|b{d.batch_size}|{d.dtype}|t{d.threads}|{d.device}"

    def target(self) -> Any:
        if self.part == "block":
            return bench.BlockTarget(self.kind, self.dim, self.side, heads=self.heads or 1,
                                     kernel_size=self.kernel_size or 3, mlp_ratio=self.mlp_ratio,
                                     mixing=self.mixing or "tied")
        if self.part == "embed":
            side_in = self.side * self.patch_size
            return bench.ModuleTarget(PatchEmbed(self.in_chans, self.dim, self.patch_size),
                                      (self.in_chans, side_in, side_in), self.label())
        return bench.ModuleTarget(_Head(self.dim, self.num_classes), (self.dim, self.side, self.side), self.label())


class _Head(nn.Module):
    """ContainerNet's classifier: BatchNorm, global average pool, Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.norm(x).flatten(2).mean(-1))


def network_parts(config: NetworkConfig) -> list[tuple[Part, int]]:
    """The parts of a network with how many times each occurs, in order."""
    out: list[tuple[Part, int]] = []
    in_chans, side = config.in_chans, config.image_size
    for stage in config.stages:
        side //= stage.patch_size
        out.append((Part("embed", stage.dim, side, in_chans=in_chans, patch_size=stage.patch_size), 1))
        out.append((Part.block(stage.kind, stage.dim, stage.heads, stage.kernel_size, stage.mlp_ratio, side,
                               config.mixing), stage.depth))
        in_chans = stage.dim
    out.append((Part("head", in_chans, side, num_classes=config.num_classes), 1))
    return out


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
                 network_stop: bench.StopRule = DEFAULT_STOP, lock: Any = None, path: str | Path | None = None,
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
        self.measure_s = 0.0
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
        options = d.options(self.stop)
        with self.lock:
            self._load()
            todo = [p for p in parts if p.key(d) not in self.entries]
            if not todo:
                return
            samples: dict[str, list[dict[str, Any]]] = {p.key(d): [] for p in todo}
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
                    start = time.perf_counter()
                    _warm_up(d)
                    row = bench.profile(part.target(), d.batch_size, options, flops=False, memory=False)
                    if row.get("status") != "ok":
                        raise MeasurementError(f"{part.label()}: status {row.get('status')!r} at batch {d.batch_size}")
                    samples[part.key(d)].append({
                        "median_ms": float(row["latency_median_ms"]), "p90_ms": float(row["latency_p90_ms"]),
                        "iqr_ms": float(row["latency_iqr_ms"]), "runs": int(row["runs"]), "noisy": bool(row["noisy"])})
                    self.measure_s += time.perf_counter() - start
                    done += 1
            for part in todo:
                runs = samples[part.key(d)]
                best = min(runs, key=lambda r: r["median_ms"])
                self.entries[part.key(d)] = {"part": asdict(part), **best, "sweeps_ms": [r["median_ms"] for r in runs],
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
        """A whole network, for real, through bench.profile (search.BenchLatency) under the same lock."""
        return BenchLatency(self.deployment, self.network_stop, self.lock).measure(config)

    def measure_networks(self, configs: Sequence[NetworkConfig], rounds: int = 2,
                         on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
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
            best = min(runs, key=lambda lat: lat.median_ms)
            out.append({"median_ms": best.median_ms, "p90_ms": best.p90_ms, "iqr_ms": best.iqr_ms, "noisy": best.noisy,
                        "rounds_ms": [lat.median_ms for lat in runs]})
        return out

    def calibrate(self, configs: Sequence[NetworkConfig], measured_ms: Sequence[float] | None = None) -> Calibration:
        """Fit the calibration on these networks (measured now unless their latencies are given)."""
        if len(configs) < len(FEATURES) + 1:
            raise SearchInputError(f"calibration: needs at least {len(FEATURES) + 1} networks, got {len(configs)}")
        self.measure_parts(self.missing(configs))
        if measured_ms is None:
            measured_ms = [m["median_ms"] for m in self.measure_networks(configs, self.network_rounds)]
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

    def ensure_calibrated(self, space: SearchSpace, n: int = DEFAULT_FIT, seed: int = FIT_SEED) -> Calibration:
        """The cached calibration for this setting, or a new one on `n` networks sampled from `space`."""
        cal = self.calibration
        if cal is not None:
            return cal
        configs = sample_configs(space, n, seed, self.deployment.image_size)
        return self.calibrate(configs)

    # --- prediction ----------------------------------------------------------------------------------

    def predict(self, config: NetworkConfig) -> float:
        cal = self.calibration
        if cal is None:
            raise NotCalibratedError(f"the predictor at {self.path} has no calibration for this deployment setting; "
                                     f"call ensure_calibrated(space) first")
        return cal.apply(self.features(config))


def _spread(runs: list[dict[str, Any]]) -> float:
    values = [r["median_ms"] for r in runs]
    return max(values) / min(values) if values and min(values) > 0 else math.inf


_WARMED: set[tuple[str, str]] = set()


def _warm_up(d: Deployment) -> None:
    """A process's first measurement runs slow (thread pools, lazy init): throw one away first."""
    key = (d.device, d.dtype)
    if key in _WARMED:
        return
    warm = bench.StopRule(rel_iqr=0.5, min_runs=1, min_time_s=0.0, max_time_s=0.3)
    bench.profile(bench.BlockTarget("conv", 64, 14), d.batch_size, d.options(warm), flops=False, memory=False)
    _WARMED.add(key)


# --- the search's gate ---------------------------------------------------------------------------------


class PredictedLatency:
    """A LatencySource that only predicts (source = "predicted"); nothing is measured but table entries."""

    def __init__(self, predictor: LatencyPredictor):
        self.predictor = predictor

    def measure(self, config: NetworkConfig) -> Latency:
        ms = self.predictor.predict(config)
        return Latency(median_ms=ms, p90_ms=ms, iqr_ms=0.0, runs=0, noisy=False, source="predicted")


class PredictorGate:
    """A LatencySource: reject a candidate predicted above `budget * (1 + margin)` without measuring
    it; measure every other one with `real`. A config measured for real once is always measured
    for real again (the search's re-check of its top candidates)."""

    def __init__(self, predictor: LatencyPredictor, real: LatencySource, budget_ms: float,
                 margin: float = DEFAULT_MARGIN):
        if not margin >= 0:
            raise SearchInputError(f"--predictor-margin {margin}: must be >= 0")
        self.predictor, self.real, self.budget_ms, self.margin = predictor, real, budget_ms, margin
        self.rejected = 0
        self.measured = 0
        self.predictions: dict[str, float] = {}
        self.rejected_configs: list[NetworkConfig] = []
        self._real: set[str] = set()

    @property
    def threshold_ms(self) -> float:
        return self.budget_ms * (1 + self.margin)

    def measure(self, config: NetworkConfig) -> Latency:
        key = config_id(config)
        if key not in self._real:
            predicted = self.predictor.predict(config)
            self.predictions[key] = predicted
            if predicted > self.threshold_ms:
                self.rejected += 1
                self.rejected_configs.append(config)
                return Latency(median_ms=predicted, p90_ms=predicted, iqr_ms=0.0, runs=0, noisy=False,
                               source="predicted")
        latency = self.real.measure(config)
        self._real.add(key)
        self.measured += 1
        return latency


class _NoLock(contextlib.nullcontext):
    """For a predictor used inside a section that already holds the machine lock."""


__all__ = ["Calibration", "DEFAULT_MARGIN", "FIT_SEED", "LatencyPredictor", "NotCalibratedError", "PREDICTOR_DIR",
           "Part", "PredictedLatency", "PredictorGate", "TABLE_STOP", "fit_calibration", "network_parts"]
