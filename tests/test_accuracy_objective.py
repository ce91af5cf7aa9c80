"""`--objective accuracy`: the adapted network, seeded training, the pruning path, the study's identity and the
CLI end to end. Latencies are injected (tests.search_helpers.FakeLatency) or measured with a short stop rule;
the data are tiny synthetic sets, so every test takes seconds."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import container
from container import NetworkConfig
from search import Scores, SearchSpace, WorkerMismatchError, run_search
from search.__main__ import main
from search.scoring.accuracy import AccuracyScorer
from search.scoring.data import Dataset, load_data
from search.scoring.training import TrainingSettings, adapt_config, adapted_patches, prepare, train

from tests.search_helpers import TINY_SPACE, FakeLatency, settings, tiny_space


def separable(tmp_path: Path, *, n: int = 240, side: int = 16, channels: int = 1, classes: int = 3,
              seed: int = 0, name: str = "tiny") -> Path:
    """Each class brightens its own band of the image, plus noise: easy to learn, impossible to guess."""
    rng = np.random.default_rng(seed)

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, count)
        x = rng.normal(0, 0.3, (count, side, side, channels)).astype(np.float32)
        band = side // classes
        for i, c in enumerate(y):
            x[i, c * band:(c + 1) * band] += 1.5
        return x, y

    (x_train, y_train), (x_test, y_test) = make(n), make(n // 4)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x_train=x_train if channels > 1 else x_train[..., 0], y_train=y_train, x_test=x_test,
             y_test=y_test)
    return path


# --- the adapted network -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side,patches,input_side", [
    (28, [2, 2, 2, 2], 32), (33, [2, 2, 2, 2], 32), (20, [1, 2, 2, 2], 24), (224, [4, 2, 2, 2], 224),
    (32, [2, 2, 2, 2], 32), (1, [1, 1, 1, 1], 1)])
def test_the_documented_patch_rule_on_the_default_space(side, patches, input_side):
    assert adapted_patches([4, 2, 2, 2], side) == (patches, input_side)


@pytest.mark.parametrize("channels,side", [(1, 28), (3, 33)])
def test_adapted_config_builds_and_runs_forward(channels, side):
    deployed = SearchSpace.default().largest(224)
    adapted = adapt_config(deployed, channels=channels, height=side, width=side, num_classes=10)
    assert adapted.in_chans == channels and adapted.image_size == 32 and adapted.num_classes == 10
    assert [s.depth for s in adapted.stages] == [s.depth for s in deployed.stages]
    assert [s.kind for s in adapted.stages] == [s.kind for s in deployed.stages]
    assert [s.dim for s in adapted.stages] == [s.dim // 4 for s in deployed.stages]
    model = container.build(adapted).eval()
    with torch.inference_mode():
        assert model(torch.randn(2, channels, 32, 32)).shape == (2, 10)


# --- training ------------------------------------------------------------------------------------------------------


FAST = TrainingSettings(epochs=2, train_images=None, val_images=60, batch_size=32, lr=3e-3, width_div=1, threads=1)


def _tiny_config() -> NetworkConfig:
    return tiny_space().smallest(32)


def test_same_seed_same_accuracy_and_a_separable_set_is_learned(tmp_path):
    data = load_data(separable(tmp_path))
    adapted = adapt_config(_tiny_config(), channels=1, height=16, width=16, num_classes=data.num_classes, width_div=1)
    prepared = prepare(data, FAST, seed=0, side=adapted.image_size)
    state = torch.random.get_rng_state()
    first = train(adapted, prepared, FAST, seed=0)
    second = train(adapted, prepared, FAST, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's generator is left alone
    assert first.curve == second.curve and first.epochs == 2
    assert first.accuracy > 0.6  # three classes: chance is 1/3


def test_validation_is_held_out_of_the_training_set_and_the_same_for_every_candidate(tmp_path):
    data = load_data(separable(tmp_path, n=100))
    settings_ = TrainingSettings(train_images=50, val_images=1000)
    a, b = prepare(data, settings_, 0, 16), prepare(data, settings_, 0, 16)
    assert len(a.y_val) == 20 and len(a.y_train) == 50  # validation: at most a fifth of the training set
    assert torch.equal(a.x_val, b.x_val)


# --- the pruning path ------------------------------------------------------------------------------------------------


class ScriptedTraining:
    """A training scorer whose learning curves are given in order of the calls: no network is trained."""

    objective = "accuracy"

    def __init__(self, curves: list[list[float]]):
        self.curves = curves
        self.trained: list[NetworkConfig] = []

    def size(self, config: NetworkConfig) -> tuple[int, int]:
        params = sum(s.depth * s.dim for s in config.stages)
        return params, params * 10

    def evaluate(self, config: NetworkConfig, on_epoch=None) -> Scores:
        curve = self.curves[len(self.trained) % len(self.curves)]
        self.trained.append(config)
        for epoch, accuracy in enumerate(curve, start=1):
            if on_epoch is not None:
                on_epoch(epoch, accuracy)
        params, flops = self.size(config)
        return Scores(curve[-1], params, flops)


def _dataset(tmp_path: Path, **kwargs) -> Dataset:
    return load_data(separable(tmp_path, **kwargs))


def test_a_trial_weak_after_its_first_epoch_is_pruned_and_never_ranked(tmp_path, monkeypatch):
    monkeypatch.setattr("search.report.VALIDATION_DIR", tmp_path / "no-validation")  # not the checkout's results
    good, weak = [0.5, 0.7, 0.8], [0.05, 0.9, 0.95]  # weak after epoch 1 (then it would have won)
    scorer = ScriptedTraining([good, weak, [0.6, 0.75, 0.85]])
    over = lambda c: c.stages[1].dim == 32  # noqa: E731  half the space is over budget
    latency = FakeLatency(lambda c: 5.0 if over(c) else 1.0)
    s = settings(tmp_path, budget_ms=3.0, objective="accuracy", sampling={"n_trials": 8},
                 scoring={"data": _dataset(tmp_path), "pruner": "halving", "training": TrainingSettings(epochs=3)})
    result = run_search(s, latency_source=latency, scorer=scorer)

    assert scorer.trained and not any(over(c) for c in scorer.trained)  # over-budget candidates never trained
    states = dict(zip(result.trials["trial"], result.trials["state"]))
    pruned = [t for t, state in states.items() if state == "PRUNED"]
    assert pruned, states
    assert not set(pruned) & set(result.ranking["trial"])
    assert len(result.trials) == 8  # a pruned trial counts toward the target
    row = result.trials.set_index("trial").loc[pruned[0]]
    assert row["epochs_trained"] == 1 and math.isclose(row["accuracy"], 0.05)
    assert result.ranking.iloc[0]["score"] == pytest.approx(0.85)
    assert result.files["learning_curves"].exists()
    report = result.files["report"].read_text()
    assert "learning_curves.png" in report and " pruned, " in report and "has not been run yet" in report
    study_json = json.loads((s.study_dir / "study.json").read_text())
    assert study_json["training"]["pruner"] == "halving" and study_json["training"]["epochs"] == 3


def test_pareto_trains_every_feasible_candidate_to_the_end(tmp_path):
    """Optuna cannot prune a two-objective study: the curve is recorded, nothing is reported or pruned."""
    scorer = ScriptedTraining([[0.5, 0.7], [0.01, 0.02]])
    s = settings(tmp_path, budget_ms=1e6, objective="accuracy", pareto=True, sampling={"n_trials": 4},
                 scoring={"data": _dataset(tmp_path), "training": TrainingSettings(epochs=2)})
    assert s.scoring.pruner == "none"
    result = run_search(s, latency_source=FakeLatency(), scorer=scorer)
    assert (result.trials["state"] == "COMPLETE").all() and (result.trials["epochs_trained"] == 2).all()
    assert result.files["learning_curves"].exists()


def test_a_worker_with_another_data_set_is_refused(tmp_path):
    def accuracy(data, epochs=1):
        return settings(tmp_path, objective="accuracy", sampling={"n_trials": 1},
                        scoring={"data": data, "pruner": "none", "training": TrainingSettings(epochs=epochs)})

    run_search(accuracy(_dataset(tmp_path)), latency_source=FakeLatency(), scorer=ScriptedTraining([[0.5]]))
    other = accuracy(_dataset(tmp_path, seed=1, name="other"))
    with pytest.raises(WorkerMismatchError, match="--objective accuracy on tiny"):
        run_search(other, latency_source=FakeLatency(), scorer=ScriptedTraining([[0.5]]))
    fewer_epochs = accuracy(_dataset(tmp_path), epochs=2)
    with pytest.raises(WorkerMismatchError, match="2 epochs"):
        run_search(fewer_epochs, latency_source=FakeLatency(), scorer=ScriptedTraining([[0.5]]))


def test_accuracy_scorer_reports_every_epoch_and_sizes_the_deployed_network(tmp_path):
    data = _dataset(tmp_path)
    scorer = AccuracyScorer(data, FAST, seed=0)
    seen: list[tuple[int, float]] = []
    config = _tiny_config()
    scores = scorer.evaluate(config, on_epoch=lambda e, a: seen.append((e, a)))
    assert [e for e, _ in seen] == [1, 2] and scores.score == seen[-1][1]
    assert scores.params == sum(p.numel() for p in container.build(config).parameters())


# --- the CLI, end to end -----------------------------------------------------------------------------------------


def test_cli_accuracy_objective_end_to_end(tmp_path, capsys):
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    argv = ["--budget-ms", "1e6", "--objective", "accuracy", "--data", str(separable(tmp_path)), "--epochs", "2",
            "--trials", "3", "--study", "acc", "--space", str(space), "--image-size", "32", "--threads", "1",
            "--results-dir", str(tmp_path / "results"), "--stop-max-s", "0.05", "--stop-min-s", "0",
            "--stop-min-runs", "3", "--no-progress", "--lock-file", str(tmp_path / "lock"), "--train-width-div", "1",
            "--val-images", "40", "--train-threads", "1", "--no-predictor"]
    assert main(argv) == 0
    out = tmp_path / "results" / "acc"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 3 and trials["epochs_trained"].notna().all()
    ranking = pd.read_csv(out / "ranking.csv")
    assert (ranking["score"] == ranking["accuracy"]).all() and ranking["score"].max() > 0.5
    assert (out / "learning_curves.png").exists()
    report = (out / "report.md").read_text()
    assert "## Evidence for this objective" in report and "1x16x16 inputs with patch sizes 4/2" in report
    assert "accuracy" in capsys.readouterr().out
