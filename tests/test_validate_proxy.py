"""validate-proxy on search.scoring.data + search.scoring.training: the evidence statistics on constructed inputs,
the protocol's test accuracy and one-epoch score, a tiny end-to-end run, its resume,
and bad input as one line with exit 2."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.scoring.data import FASHION_MNIST_DIR, load_data
from search.experiments.evidence import (ValidationProtocol, bootstrap_mean, noise_ceiling, rank_correlations,
                                         supported_objective)
from search.space import SearchInputError, sample_configs
from search.scoring.training import TrainingSettings
from search.experiments.validate import ValidationSettings, main, validate_proxy

from tests.search_helpers import IMAGE, tiny_space

TINY_TRAINING = TrainingSettings(epochs=2, train_images=60, val_images=20, batch_size=16, width_div=2, threads=1)


def tiny_npz(tmp_path: Path, *, n: int = 100, side: int = 16, classes: int = 3) -> Path:
    """Each class brightens its own band of the image, plus noise."""
    rng = np.random.default_rng(0)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, count)
        x = rng.normal(0, 0.3, (count, side, side)).astype(np.float32)
        for i, c in enumerate(y):
            x[i, c * (side // classes):(c + 1) * (side // classes)] += 1.5
        return x, y

    (x_train, y_train), (x_test, y_test) = make(n), make(n // 2)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# --- statistics ----------------------------------------------------------------------------------------------------


def test_rank_correlations_of_a_monotone_and_an_inverse_relation():
    x = np.arange(20, dtype=float)
    up = rank_correlations(x, np.exp(x / 5), n_boot=200, seed=0)
    assert up["spearman"] == pytest.approx(1.0) and up["kendall"] == pytest.approx(1.0)
    assert up["spearman_lo"] == pytest.approx(1.0)
    down = rank_correlations(x, -x ** 3, n_boot=200, seed=0)
    assert down["spearman"] == pytest.approx(-1.0) and down["kendall"] == pytest.approx(-1.0)
    noisy = rank_correlations(x, x + np.random.default_rng(0).normal(0, 8, 20), n_boot=300, seed=0)
    assert noisy["spearman_lo"] < noisy["spearman"] < noisy["spearman_hi"]
    # a degenerate score (-inf) ranks below every finite one
    assert rank_correlations([-math.inf, 1, 2, 3], [0.1, 0.2, 0.3, 0.4], n_boot=20)["spearman"] == pytest.approx(1)


def test_noise_ceiling_on_constructed_accuracies():
    same = pd.DataFrame([{"arch": a, "seed": s, "accuracy": a / 10 + 0.001 * s} for a in range(10) for s in (0, 1)])
    c = noise_ceiling(same, [0, 1], n_boot=100)
    assert c["spearman"] == pytest.approx(1.0) and c["spearman_brown"] == pytest.approx(1.0)
    assert c["seed_std_mean"] == pytest.approx(0.001 / math.sqrt(2), rel=1e-3)
    swapped = pd.DataFrame([{"arch": a, "seed": s, "accuracy": (a if s == 0 else 9 - a) / 10}
                            for a in range(10) for s in (0, 1)])
    assert noise_ceiling(swapped, [0, 1], n_boot=50)["spearman"] == pytest.approx(-1.0)


def test_bootstrap_mean_interval_holds_the_mean():
    b = bootstrap_mean([1.0, 2.0, 3.0, 4.0], n_boot=500)
    assert b["mean"] == 2.5 and b["lo"] < 2.5 < b["hi"] and b["n"] == 4


def _corr(rhos: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"score": k, "spearman": v, "spearman_lo": v - 0.2, "training_free": k != "one_epoch"}
                         for k, v in rhos.items()])


def test_supports_sentence_when_params_beats_every_proxy():
    s = supported_objective(_corr({"naswot": 0.3, "synflow": 0.5, "params": 0.6, "flops": 0.55, "one_epoch": 0.9}))
    assert s["objective"] == "params" and not s["proxy_beats_size"]
    assert s["sentence"].startswith("No training-free proxy beats #params or FLOPs here")
    s = supported_objective(_corr({"naswot": 0.7, "synflow": 0.5, "params": 0.6, "flops": 0.55, "one_epoch": 0.9}))
    assert s["objective"] == "naswot" and s["proxy_beats_size"] and "`naswot` (0.70)" in s["sentence"]
    weak = supported_objective(_corr({"naswot": 0.1, "synflow": 0.0, "params": 0.15, "flops": 0.1}))
    assert "not shown to track accuracy" in weak["sentence"]


# --- the protocol ----------------------------------------------------------------------------------------------------


def test_protocol_tests_on_the_test_split_and_takes_the_one_epoch_score_from_the_curve(tmp_path):
    dataset = load_data(tiny_npz(tmp_path))
    protocol = ValidationProtocol(dataset, TINY_TRAINING)
    config = sample_configs(tiny_space(), 1, 0, IMAGE)[0]
    r = protocol.train(config, seed=0)
    assert len(r.val_curve) == TINY_TRAINING.epochs and r.one_epoch == r.val_curve[0]
    # accuracies are fractions of the validation split (20 images) and of the test split (50 images)
    assert round(r.one_epoch * 20, 6) == int(round(r.one_epoch * 20))
    assert round(r.test_accuracy * 50, 6) == int(round(r.test_accuracy * 50))
    again = protocol.train(config, seed=0)  # seeded: the same run again
    assert (again.val_curve, again.test_accuracy) == (r.val_curve, r.test_accuracy)
    with pytest.raises(SearchInputError, match="--epochs 1"):
        ValidationProtocol(dataset, TrainingSettings(epochs=1))


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_protocol_on_a_few_fashion_mnist_images():
    dataset = load_data("fashion-mnist", limit=80)
    protocol = ValidationProtocol(dataset, TrainingSettings(epochs=2, train_images=60, val_images=16, batch_size=16,
                                                            width_div=8, threads=1))
    config = sample_configs(tiny_space(), 1, 1, IMAGE)[0]
    assert protocol.adapt(config).image_size == 32
    r = protocol.train(config, seed=1)
    assert 0 <= r.test_accuracy <= 1 and 0 <= r.one_epoch <= 1


# --- end to end, resume, bad input -----------------------------------------------------------------------------------


def _settings(data: Path, archs: int = 3) -> ValidationSettings:
    return ValidationSettings(data=str(data), archs=archs, training=TINY_TRAINING, image_size=IMAGE, bootstrap=40,
                              proxy_inits=1, proxy_batch=2, progress=False)


@pytest.mark.slow
def test_a_tiny_validation_end_to_end_and_its_resume(tmp_path, monkeypatch):
    data = tiny_npz(tmp_path)
    out = tmp_path / "out"
    summary = validate_proxy(_settings(data), tiny_space(), out)
    assert summary["complete"] and {r["score"] for r in summary["correlations"]} == \
        {"flops", "naswot", "params", "synflow", "one_epoch"}
    for name in ("report.md", "accuracies.csv", "scores.csv", "correlations.csv", "report.json",
                 "scores_vs_accuracy.png", "run.json"):
        assert (out / name).exists(), name
    acc = pd.read_csv(out / "accuracies.csv")
    assert len(acc) == 6 and acc["accuracy"].between(0, 1).all()
    scores = pd.read_csv(out / "scores.csv")
    seed0 = acc[acc["seed"] == 0].set_index("arch")["one_epoch"]
    assert (scores.set_index("arch")["one_epoch"] == seed0).all()  # seed 0's first epoch, no extra training
    report = (out / "report.md").read_text()
    assert "Noise ceiling" in report and "0.7" in report and "Objective the evidence supports" in report
    assert summary["supported"]["sentence"] in report and "wall time" in report and "logical cores" in report
    assert json.loads((out / "report.json").read_text())["supported"] == summary["supported"]

    # a rerun with one more architecture trains only that one
    import search.experiments.evidence as evidence
    trained: list[int] = []
    original = evidence.ValidationProtocol.train
    monkeypatch.setattr(evidence.ValidationProtocol, "train",
                        lambda self, config, seed: trained.append(seed) or original(self, config, seed))
    summary = validate_proxy(_settings(data, archs=4), tiny_space(), out)
    assert trained == [0, 1] and len(pd.read_csv(out / "accuracies.csv")) == 8 and summary["archs_done"] == 4
    # other settings start over
    trained.clear()
    validate_proxy(ValidationSettings(**{**_settings(data).__dict__, "sample_seed": 7}), tiny_space(), out)
    assert len(trained) == 6


def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys):
    for argv, flag in ((["--seeds", "1"], "--seeds"), (["--epochs", "0"], "--epochs"),
                       (["--epochs", "1", "--data", str(tiny_npz(tmp_path))], "--epochs 1"),
                       (["--data", str(tmp_path / "missing.npz")], "--data"), (["--archs", "2"], "--archs")):
        try:
            code = main([*argv, "--out-dir", str(tmp_path / "o"), "--no-progress"])
        except SystemExit as e:  # argparse's checked types exit from the parser
            code = e.code
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and flag in err, err


def test_the_search_report_cites_a_complete_fashion_mnist_validation_only(tmp_path):
    from search.report import evidence

    row = {"score": "params", "spearman": 0.41, "spearman_lo": 0.1, "spearman_hi": 0.66}
    summary = {"complete": True, "data": "fashion-mnist: 60000 training + 10000 test images, 1x28x28, 10 classes",
               "settings": {"archs": 40, "seeds": [0, 1]}, "correlations": [row],
               "noise_ceiling": {"spearman": 0.81}}
    (tmp_path / "report.json").write_text(json.dumps(summary))
    text = " ".join(evidence("params", tmp_path))
    assert "Spearman rho of `params` with trained accuracy 0.41 [0.10, 0.66]" in text and "0.81" in text
    assert "has not been run yet" not in text
    (tmp_path / "report.json").write_text(json.dumps(summary | {"complete": False}))  # a run still going
    assert "has not been run yet" in " ".join(evidence("params", tmp_path))
    assert "has not been run yet" in " ".join(evidence("naswot", tmp_path / "nowhere"))


@pytest.mark.slow
def test_two_worker_processes_train_the_same_accuracies_as_one(tmp_path):
    from dataclasses import replace
    data = tiny_npz(tmp_path)
    validate_proxy(_settings(data), tiny_space(), tmp_path / "one")
    summary = validate_proxy(replace(_settings(data), workers=2), tiny_space(), tmp_path / "two")
    one, two = (pd.read_csv(tmp_path / d / "accuracies.csv").drop(columns="train_s") for d in ("one", "two"))
    assert summary["complete"] and len(two) == 6
    pd.testing.assert_frame_equal(one, two)  # seeded, one thread each: where it ran does not matter


def test_an_interrupted_architecture_keeps_its_finished_training(tmp_path, monkeypatch):
    import search.experiments.evidence as evidence
    data, out = tiny_npz(tmp_path), tmp_path / "out"
    calls: list[int] = []
    original = evidence.ValidationProtocol.train

    def train_then_stop(self, config, seed):
        calls.append(seed)
        if len(calls) == 2:  # arch 0's second seed
            raise KeyboardInterrupt
        return original(self, config, seed)

    monkeypatch.setattr(evidence.ValidationProtocol, "train", train_then_stop)
    with pytest.raises(KeyboardInterrupt):
        validate_proxy(_settings(data), tiny_space(), out)
    kept = pd.read_csv(out / "accuracies.csv")
    assert list(zip(kept["arch"], kept["seed"])) == [(0, 0)]
    calls.clear()
    monkeypatch.setattr(evidence.ValidationProtocol, "train",
                        lambda self, config, seed: calls.append(seed) or original(self, config, seed))
    assert validate_proxy(_settings(data), tiny_space(), out)["complete"]
    assert len(calls) == 5 and len(pd.read_csv(out / "accuracies.csv")) == 6
