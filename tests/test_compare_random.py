"""`--sampler random` and compare-random: a RandomSampler study with its own identity, and the comparison end to end
on a tiny space with a fake latency, a fake scorer and a fake training protocol (nothing timed, seconds)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from container import NetworkConfig
from search.experiments.compare_random import CompareSettings, compare_random, main, verdict
from search.experiments.evidence import Trained
from search.latency import Deployment
from search.settings import WorkerMismatchError
from search.study import SearchStudy

from tests.search_helpers import FAST_STOP, IMAGE, FakeLatency, FakeScorer, settings, tiny_space


def test_sampler_random_is_a_random_sampler_study_and_part_of_the_identity(tmp_path):
    tpe, rnd = settings(tmp_path), settings(tmp_path, sampling={"sampler": "random"}, storage={"study_name": None})
    assert tpe.identity()["sampler"] == "tpe" and rnd.identity()["sampler"] == "random"
    assert rnd.name.endswith("-random")
    assert not settings(tmp_path, storage={"study_name": None}).name.endswith("-random")
    study = SearchStudy(rnd, latency_source=FakeLatency(), scorer=FakeScorer()).open()
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    assert json.loads(json.dumps(study.user_attrs["sampler"])) == "random"
    assert isinstance(SearchStudy(tpe, latency_source=FakeLatency(), scorer=FakeScorer()).open().sampler,
                      optuna.samplers.TPESampler)
    with pytest.raises(Exception, match="--sampler"):
        settings(tmp_path, sampling={"sampler": "grid"})


class FakeProtocol:
    """Test accuracy grows with the winner's total width: a fixed, known answer per architecture."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def train(self, config: NetworkConfig, seed: int) -> Trained:
        self.calls.append((config.to_json(sort_keys=True), seed))
        width = sum(s.depth * s.dim for s in config.stages)
        return Trained(val_curve=[0.5], test_accuracy=0.5 + width / 1000 + 0.001 * seed, train_s=0.0, final_loss=0.0)

    @property
    def settings(self):
        from search.experiments.evidence import VALIDATION_TRAINING
        return VALIDATION_TRAINING


def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((20, 8, 8)), y_train=np.arange(20) % 2, x_test=rng.random((6, 8, 8)),
             y_test=np.arange(6) % 2)
    return path


@pytest.mark.slow
def test_compare_random_end_to_end_with_fakes(tmp_path):
    fake, protocol = FakeLatency(), FakeProtocol()
    s = CompareSettings(budget_ms=3.0, trials=6, seeds=(0, 1), objective="params",
                        deployment=Deployment(image_size=IMAGE, threads=1), space=tiny_space(), stop=FAST_STOP,
                        data=str(_npz(tmp_path)), train_seeds=(0, 1), bootstrap=50, out_dir=tmp_path / "cmp",
                        progress=False)
    summary = compare_random(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=protocol)
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert sorted(zip(runs["seed"], runs["sampler"])) == [(0, "random"), (0, "tpe"), (1, "random"), (1, "tpe")]
    assert (runs["latency_ms"] <= 3.0).all() and (runs["trials_run"] == 6).all()
    # every winner trained once per training seed, with the protocol; the same architecture is never trained twice
    assert len(protocol.calls) == len(set(protocol.calls)) == 2 * runs["config"].nunique()
    for _, r in runs.iterrows():
        config = NetworkConfig.from_json(r["config"])
        assert r["accuracy"] == pytest.approx(0.5 + sum(st.depth * st.dim for st in config.stages) / 1000 + 0.0005)
    # one latency cache for all studies: later studies reuse what earlier ones measured
    assert runs["latency_cached"].iloc[1:].sum() > 0
    assert (tmp_path / "cmp" / "latency_cache.json").exists()
    diff = summary["difference"]
    wide = runs.pivot(index="seed", columns="sampler", values="accuracy")
    assert diff["mean"] == pytest.approx((wide["tpe"] - wide["random"]).mean()) and diff["n"] == 2
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert summary["sentence"] in report and "paired difference TPE - random" in report
    assert (tmp_path / "cmp" / "accuracy.png").exists() and "logical cores" in report
    # a rerun resumes the studies and reuses the trainings
    protocol.calls.clear()
    compare_random(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=protocol)
    assert protocol.calls == []


def test_verdict_says_the_result_whichever_way_it_goes():
    assert verdict({"n": 5, "mean": 0.01, "lo": 0.002, "hi": 0.02}).startswith("The search (TPE) beats random search")
    assert verdict({"n": 5, "mean": -0.01, "lo": -0.02, "hi": -0.001}).startswith("Random search beats")
    assert "includes zero" in verdict({"n": 5, "mean": 0.0, "lo": -0.01, "hi": 0.01}, 2)
    assert "nothing to compare" in verdict({"n": 0, "mean": math.nan, "lo": math.nan, "hi": math.nan})


def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys):
    for argv, flag in ((["--budget-ms", "0"], "--budget-ms"), (["--budget-ms", "5", "--seeds", "1"], "--seeds"),
                       (["--budget-ms", "5", "--data", str(tmp_path / "none.npz")], "--data"),
                       (["--budget-ms", "5", "--runtime", "nope"], "nope"), (["--trials", "0"], "--trials")):
        try:
            code = main([*argv, "--out-dir", str(tmp_path / "o"), "--no-progress"])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and flag in err, (argv, err)


def test_a_random_search_worker_is_refused_by_a_tpe_study_of_the_same_name(tmp_path):
    same = {"study_name": "same"}
    SearchStudy(settings(tmp_path, storage=same), latency_source=FakeLatency(), scorer=FakeScorer()).open()
    with pytest.raises(WorkerMismatchError, match="--sampler tpe, this run asks for random"):
        SearchStudy(settings(tmp_path, sampling={"sampler": "random"}, storage=same), latency_source=FakeLatency(),
                    scorer=FakeScorer()).open()
