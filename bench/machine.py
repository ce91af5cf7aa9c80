"""The machine's reference speed: one notion of "how fast is this machine now" for bench, search and gate.

The calibration workload (bench.timing.calibration_workload) is timed once, at length, and its median
per-call time stored per machine fingerprint (device, threads and the hardware; bench.env.fingerprint)
in results/machines/<fingerprint>.json, made on first use and remade by `python -m bench machine
--refresh`. Every measurement times the same workload between its blocks; its ratio to the stored time
turns a measured latency into one at the reference speed (`latency_norm_ms`), and `machine_speed` says
by how much the machine was off it during the measurement.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.env import environment, fingerprint, machine_summary
from bench.kit import results_root, write_json
from bench.timing import Calibration, StopRule, calibration_workload, measure_latency

SCHEMA = "container-bench-machine/1"
# The reference is the median of this many seconds of calibration calls: long enough that a few seconds'
# burst of another process on the machine moves it by little.
REFERENCE_STOP = StopRule(rel_iqr=0.0, min_runs=5, min_time_s=4.0, max_time_s=4.0)
REFERENCE_WARMUP_S = 1.0
_loaded: dict[Path, "ReferenceSpeed"] = {}


@dataclass(frozen=True)
class ReferenceSpeed:
    fingerprint: str
    device: str
    threads: int
    calibration_ms: float  # the calibration workload's median per-call time: the reference speed
    created_utc: str
    method: str  # how it was measured, in words
    machine: str  # bench.env.machine_summary
    calls: int

    def calibration(self) -> Calibration:
        return Calibration(calibration_workload(self.device), self.calibration_ms)


MACHINES_ENV = "CONTAINER_BENCH_MACHINES"  # another directory for the reference files (the tests' own)


def machines_dir() -> Path:
    """$CONTAINER_BENCH_MACHINES if set, else results/machines/ under the results root."""
    return Path(os.environ[MACHINES_ENV]) if os.environ.get(MACHINES_ENV) else results_root() / "machines"


def reference_path(device: str = "cpu", threads: int | None = None) -> Path:
    threads = threads or torch.get_num_threads()
    return machines_dir() / f"{fingerprint(device, threads)}.json"


def measure_reference(device: str = "cpu", threads: int | None = None) -> ReferenceSpeed:
    """Time the calibration workload for REFERENCE_STOP's seconds (after a warm-up) and store it."""
    threads = threads or torch.get_num_threads()
    stats = measure_latency(calibration_workload(device), device=device, threads=threads, stop=REFERENCE_STOP,
                            warmup_s=REFERENCE_WARMUP_S, min_block_s=0.0, label="calibration")
    env = environment(device, threads)
    reference = ReferenceSpeed(
        fingerprint=fingerprint(device, threads), device=str(device), threads=threads,
        calibration_ms=stats.median_ms, created_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        method=(f"median of {stats.timed_calls} single calls of bench.timing.calibration_workload (768x768 GEMM and "
                f"a 5x5 depthwise conv over 128x112x112) over {REFERENCE_STOP.min_time_s:g} s after a "
                f"{REFERENCE_WARMUP_S:g} s warm-up, {threads} thread(s), at commit {env['git_commit']}"),
        machine=machine_summary(env), calls=stats.timed_calls)
    path = reference_path(device, threads)
    write_json(path, {"schema": SCHEMA, **asdict(reference)})
    _loaded[path] = reference
    return reference


def reference_speed(device: str = "cpu", threads: int | None = None, *, refresh: bool = False) -> ReferenceSpeed:
    """The stored reference speed of this machine at `threads` (made now if there is none, or `refresh`)."""
    path = reference_path(device, threads)
    if not refresh:
        if path in _loaded:
            return _loaded[path]
        try:
            doc = json.loads(path.read_text())
            if doc.get("schema") == SCHEMA:
                doc.pop("schema")
                _loaded[path] = ReferenceSpeed(**doc)
                return _loaded[path]
        except (OSError, ValueError, TypeError):
            pass  # missing or unreadable: measured again
    return measure_reference(device, threads)


def speed_now(reference: ReferenceSpeed, stop: StopRule = StopRule(min_time_s=0.5, max_time_s=2.0)) -> float:
    """The machine's speed now against `reference`: the reference calibration time over the one measured now
    (below 1: slower than the reference)."""
    now = measure_latency(calibration_workload(reference.device), device=reference.device, threads=reference.threads,
                          stop=stop, min_block_s=0.0, label="calibration")
    return reference.calibration_ms / now.median_ms


def adopt(reference: ReferenceSpeed) -> None:
    """Use `reference` for its fingerprint in this process (a search worker adopts its study's), whatever
    the stored file says."""
    _loaded[machines_dir() / f"{reference.fingerprint}.json"] = reference


def machine_calibration(device: str = "cpu", threads: int | None = None) -> Calibration:
    """The calibration every measurement on `device` at `threads` interleaves: one workload per reference."""
    reference = reference_speed(device, threads or torch.get_num_threads())
    if reference not in _calibrations:
        _calibrations[reference] = reference.calibration()
    return _calibrations[reference]


_calibrations: dict[ReferenceSpeed, Calibration] = {}


__all__ = ["ReferenceSpeed", "adopt", "machine_calibration", "machines_dir", "measure_reference", "reference_path",
           "reference_speed", "speed_now"]
