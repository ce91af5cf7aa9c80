"""One search worker for the multi-process tests: `python -m tests.search_worker --study s --trials 12 ...`.

It runs the library's `run_search` on the tiny space with a fake latency source that sleeps (so that
two workers measuring at once would overlap) and logs every measurement interval, and a fake scorer
that logs every trial it scores. The study's machine lock is the real one. With `--go FILE` the worker
imports everything, writes `FILE.ready-<pid>` and waits for FILE, so that several workers start
their trials together, and each worker's first scored trial waits until every worker has reached its own
(so that one worker cannot finish the whole study before another has opened it, however busy the machine).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from container import NetworkConfig
from search import Latency, Scores, run_search
from tests.search_helpers import cost, settings


def _append(path: Path, record: dict) -> None:
    line = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line with O_APPEND: lines from workers never interleave
    finally:
        os.close(fd)


class LoggingLatency:
    def __init__(self, log: Path, sleep_s: float):
        self.log, self.sleep_s = log, sleep_s

    def measure(self, config: NetworkConfig) -> Latency:
        start = time.time()
        time.sleep(self.sleep_s)
        ms = cost(config)
        _append(self.log, {"event": "measure", "pid": os.getpid(), "start": start, "end": time.time(),
                           "config": config.to_json(sort_keys=True)})
        return Latency(median_ms=ms, p90_ms=ms * 1.05, iqr_ms=ms * 0.02, runs=5, source="fake")


class LoggingScorer:
    objective = "params"

    def __init__(self, log: Path, go: Path | None = None, workers: int = 1):
        self.log, self.go, self.workers = log, go, workers
        self.waited = go is None

    def _rendezvous(self) -> None:
        """Runs outside the machine lock (after the measurement), so waiting here cannot deadlock."""
        if self.waited:
            return
        self.waited = True
        Path(f"{self.go}.trial-{os.getpid()}").touch()
        deadline = time.monotonic() + 600
        while len(list(self.go.parent.glob(f"{self.go.name}.trial-*"))) < self.workers:
            if time.monotonic() > deadline:
                return  # the test's own checks then say which worker ran no trial
            time.sleep(0.02)

    def _scores(self, config: NetworkConfig) -> Scores:
        params = sum(s.depth * s.dim * s.dim * (2 + s.mlp_ratio) for s in config.stages)
        return Scores(score=math.log(params), params=int(params), flops=int(params * 100))

    def evaluate(self, config: NetworkConfig) -> Scores:
        self._rendezvous()
        _append(self.log, {"event": "trial", "pid": os.getpid(), "scored": True,
                           "config": config.to_json(sort_keys=True)})
        return self._scores(config)

    def size(self, config: NetworkConfig) -> tuple[int, int]:
        self._rendezvous()
        _append(self.log, {"event": "trial", "pid": os.getpid(), "scored": False,
                           "config": config.to_json(sort_keys=True)})
        s = self._scores(config)
        return s.params, s.flops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tmp", type=Path, required=True, help="the test's tmp_path (results dir and lock live there)")
    p.add_argument("--storage", default=None)
    p.add_argument("--study", default="shared")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--budget-ms", type=float, default=3.0)
    p.add_argument("--sleep", type=float, default=0.05)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--go", type=Path, default=None)
    p.add_argument("--workers", type=int, default=1, help="with --go: how many workers meet at their first trial")
    args = p.parse_args(argv)
    s = settings(args.tmp, budget_ms=args.budget_ms, sampling={"n_trials": args.trials, "seed": None},
                 storage={"study_name": args.study, "url": args.storage})
    if args.go is not None:
        Path(f"{args.go}.ready-{os.getpid()}").touch()
        deadline = time.monotonic() + 600
        while not args.go.exists():
            if time.monotonic() > deadline:
                print("worker: no go signal", file=sys.stderr)
                return 1
            time.sleep(0.02)
    result = run_search(s, latency_source=LoggingLatency(args.log, args.sleep),
                        scorer=LoggingScorer(args.log, args.go, args.workers))
    _append(args.log, {"event": "done", "pid": os.getpid(), "trials_seen": len(result.trials),
                       "interrupted": result.interrupted})
    return 0


if __name__ == "__main__":
    sys.exit(main())
