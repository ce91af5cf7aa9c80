"""Shared pieces of the search tests: a tiny space, a fake latency source and a fake scorer.

Nothing here times anything: constraint handling is tested against injected latencies, so the
tests never depend on how fast this machine is.
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from dataclasses import replace
from typing import Any, Callable, Union

import bench
import container
from container import NetworkConfig
from search import (Deployment, Finalists, Latency, MeasurementError, Measuring, Reporting, Sampling, Scores, Scoring,
                    SearchSettings, SearchSpace, StudyStorage)

TINY_SPACE = {
    "num_classes": 10,
    "stages": [
        {"depth": [1, 2], "dim": [8, 16], "head_dim": [8], "kernel_size": [3, 5], "kind": ["conv", "mix"],
         "mlp_ratio": [1, 2], "patch_size": 4},
        {"depth": [1, 2], "dim": [16, 32], "head_dim": [8, 16], "kernel_size": [3], "kind": ["conv", "attn"],
         "mlp_ratio": [2], "patch_size": 2},
    ],
}
IMAGE = 32
FAST_STOP = bench.StopRule(rel_iqr=0.5, min_runs=3, min_time_s=0.0, max_time_s=0.05)


def tiny_space() -> SearchSpace:
    return SearchSpace.from_dict(TINY_SPACE)


def cost(config: NetworkConfig) -> float:
    """A made-up latency (ms) that grows with depth and width: 1 ms for the smallest network."""
    return sum(s.depth * s.dim for s in config.stages) / 24.0


class FakeLatency:
    """A LatencySource with latencies from a function; counts measurements per config."""

    def __init__(self, fn: Callable[[NetworkConfig], float] = cost, *,
                 remeasure: Callable[[NetworkConfig], float] | None = None,
                 fail: Callable[[NetworkConfig], bool] | None = None, interrupt_at: int | None = None):
        self.fn, self.remeasure_fn, self.fail, self.interrupt_at = fn, remeasure, fail, interrupt_at
        self.calls: Counter[str] = Counter()
        self.total = 0

    def measure(self, config: NetworkConfig) -> Latency:
        self.total += 1
        if self.interrupt_at is not None and self.total == self.interrupt_at:
            raise KeyboardInterrupt
        key = config.to_json()
        self.calls[key] += 1
        if self.fail is not None and self.fail(config):
            raise MeasurementError("status 'oom'")
        fn = self.remeasure_fn if (self.remeasure_fn is not None and self.calls[key] > 1) else self.fn
        ms = fn(config)
        return Latency(median_ms=ms, p90_ms=ms * 1.05, iqr_ms=ms * 0.02, runs=5, source="fake")


class FakeScorer:
    """Score = log #params-ish without building anything: bigger is better, as proxies tend to say."""

    objective = "params"

    def evaluate(self, config: NetworkConfig) -> Scores:
        params = sum(s.depth * s.dim * s.dim * (2 + s.mlp_ratio) for s in config.stages)
        return Scores(score=math.log(params), params=int(params), flops=int(params * 100))

    def size(self, config: NetworkConfig) -> tuple[int, int]:
        s = self.evaluate(config)
        return s.params, s.flops


GroupOverrides = Union[dict[str, Any], Sampling, Measuring, Scoring, StudyStorage, Reporting, None]


def settings(tmp_path: Path, budget_ms: float = 3.0, *, sampling: GroupOverrides = None,
             measuring: GroupOverrides = None, scoring: GroupOverrides = None, storage: GroupOverrides = None,
             report: GroupOverrides = None, **top: Any) -> SearchSettings:
    """Small, fast settings of a test study in `tmp_path`. `top` replaces top-level fields (deployment, space,
    objective, pareto); each group is given whole, or as a dict of its fields replaced in the test's defaults,
    e.g. settings(tmp_path, sampling={"n_trials": 4}, storage={"url": url})."""
    defaults = {"sampling": Sampling(n_trials=12, seed=0),
                # No predictor gate unless a test asks: its table would be measured for the tiny space first.
                "measuring": Measuring(stop=FAST_STOP, lock_file=str(tmp_path / "lock"), predictor=False),
                "scoring": Scoring(proxy_inits=1, proxy_batch=2),
                "storage": StudyStorage(study_name="t", results_dir=tmp_path / "results"),
                "report": Reporting(progress=False)}
    given = {"sampling": sampling, "measuring": measuring, "scoring": scoring, "storage": storage, "report": report}
    groups = {name: value if not isinstance(value, dict) else replace(defaults[name], **value)
              for name, value in given.items() if value is not None}
    kwargs: dict[str, Any] = dict(budget_ms=budget_ms, deployment=Deployment(image_size=IMAGE, threads=1),
                                  space=tiny_space(), objective="params")
    # No finalists unless a test asks (tests/test_finalists.py): they would train on Fashion-MNIST.
    kwargs["finalists"] = Finalists(count=0)
    return SearchSettings(**{**kwargs, **defaults, **groups, **top})


def build_ok(config: dict) -> None:
    import torch

    model = container.build(config).eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, config["image_size"], config["image_size"]))
    assert out.shape == (1, config["num_classes"])
