"""The finalists: which candidates are trained after the search, that the winner is the most accurate of them, that a
resumed study trains nothing twice, and when nothing is trained."""
from __future__ import annotations

import math
from types import SimpleNamespace
from dataclasses import replace

import numpy as np
import optuna
import pandas as pd
import pytest

from container import NetworkConfig
from search import Deployment, Finalists, SearchInputError, SearchSpace, make_storage, ranking, run_search
from search.finalists import choose
from search.settings import FINALIST_MARGIN
from search.scoring.accuracy import AccuracyScorer
from search.scoring.training import TrainingSettings
from search.trials import TRIAL_COLUMNS
from tests.search_helpers import FakeLatency, FakeScorer, cost, settings

IMAGE = 224
TINY_TRAINING = TrainingSettings(epochs=2, train_images=40, val_images=10, batch_size=16, width_div=8, threads=1)


def _npz(tmp_path) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(path, x_train=rng.random((60, 16, 16)).astype(np.float32), y_train=np.arange(60) % 10,
             x_test=rng.random((20, 16, 16)).astype(np.float32), y_test=np.arange(20) % 10)
    return str(path)


def _most_accurate_wins(tmp_path, **overrides) -> Finalists:
    """Two finalists on the tiny data, no margin for the scaled start: the most accurate wins."""
    return Finalists(**{"count": 2, "data": _npz(tmp_path), "training": TINY_TRAINING, "margin": 0.0, **overrides})


def _frame(rows: list[tuple[int, float, str | None, float | None]]) -> pd.DataFrame:
    """(trial, score, start, finalist_accuracy) rows of feasible, kept trials with distinct configs."""
    def row(t: int, score: float, start: str | None, accuracy: float | None) -> dict:
        config = NetworkConfig.from_dict({"stages": [{"depth": 1, "dim": 8 * (t + 1)}], "image_size": 32})
        return dict.fromkeys(TRIAL_COLUMNS) | {
            "trial": t, "state": "COMPLETE", "score": score, "feasible": True, "dropped": False, "latency_norm_ms": 1.0,
            "config_key": f"k{t}", "start": start, "finalist_accuracy": accuracy, "config": config.to_json()}
    return pd.DataFrame([row(*r) for r in rows])


def test_the_finalists_are_the_top_by_the_objective_and_the_best_scaled_start():
    frame = _frame([(0, 5.0, "scaled", None), (1, 7.0, "scaled", None), (2, 9.0, None, None), (3, 8.0, None, None),
                    (4, 6.0, None, None)])
    assert choose(frame, 2) == [2, 3, 1]  # trial 1 is the best of the scaled starts
    assert choose(frame, 3) == [2, 3, 1]  # already among the top: not twice
    assert choose(frame.assign(start=None), 2) == [2, 3]
    assert choose(frame, 0) == []


def test_the_ranking_puts_the_finalists_first_most_accurate_first():
    frame = _frame([(0, 9.0, None, 0.70), (1, 8.0, None, 0.80), (2, 7.0, "scaled", 0.75), (3, 9.5, None, None)])
    assert list(ranking(frame)["trial"]) == [1, 2, 0, 3]
    assert list(ranking(frame.assign(finalist_accuracy=math.nan))["trial"]) == [3, 0, 1, 2]


def test_a_margin_keeps_the_scaled_start_unless_a_finalist_beats_it_by_more():
    frame = _frame([(0, 9.0, None, 0.70), (1, 8.0, None, 0.80), (2, 7.0, "scaled", 0.75), (3, 9.5, None, None)])
    assert list(ranking(frame, incumbent_margin=0.04)["trial"]) == [1, 2, 0, 3]  # 0.80 beats 0.75 by more than 0.04
    assert list(ranking(frame, incumbent_margin=0.06)["trial"]) == [2, 1, 0, 3]  # not by more than 0.06
    ranked = ranking(frame, incumbent_margin=0.06)
    assert ranked.set_index("trial").loc[2, "finalist_accuracy"] == 0.75  # the table shows the accuracy as trained
    with pytest.raises(SearchInputError, match="--finalist-margin 1.5"):
        Finalists(margin=1.5)


def _search(tmp_path, finalists: Finalists, n_trials: int = 8):
    s = settings(tmp_path, budget_ms=120.0, space=SearchSpace.default(), deployment=Deployment(image_size=IMAGE,
                 threads=1), sampling={"n_trials": n_trials}, report={"recheck_margin": 0.0})
    s.finalists = finalists
    result = run_search(s, latency_source=FakeLatency(cost), scorer=FakeScorer())
    return result, optuna.load_study(study_name="t", storage=make_storage(None, tmp_path / "results" / "t"))


@pytest.mark.slow
def test_the_winner_is_the_most_accurate_finalist_and_a_resume_trains_nothing(tmp_path, monkeypatch):
    trained: list[str] = []
    real_train = AccuracyScorer.train

    def counting(self, config, on_epoch=None):
        trained.append(config.to_json())
        assert self.seed == 10_000  # the search's seed 0 + SEED_OFFSET: never an evaluation's training seed
        return real_train(self, config, on_epoch)

    monkeypatch.setattr(AccuracyScorer, "train", counting)
    result, study = _search(tmp_path, _most_accurate_wins(tmp_path))
    accuracies = {k.removeprefix("finalist:"): v["accuracy"] for k, v in study.user_attrs.items()
                  if k.startswith("finalist:")}
    chosen = result.trials.set_index("trial").loc[choose(result.trials, 2)]  # the top two and the best scaled start
    assert len(chosen) >= 2 and (chosen["start"] == "scaled").any()
    assert len(accuracies) == len(trained) == len(chosen) and set(chosen["config_key"]) == set(accuracies)
    ranked = result.ranking
    assert ranked["finalist_accuracy"].iloc[0] == max(accuracies.values())  # the winner: the most accurate
    top = ranked[ranked["duplicate_of"].isna()]["finalist_accuracy"].iloc[:len(chosen)]
    assert list(top) == sorted(accuracies.values(), reverse=True)
    trained.clear()
    _search(tmp_path, _most_accurate_wins(tmp_path))  # resumed, nothing new
    assert trained == []
    assert Finalists().margin == FINALIST_MARGIN > 0
    # Another fidelity: the stored accuracies are not this run's, so the finalists are trained again.
    _search(tmp_path, _most_accurate_wins(tmp_path, training=replace(TINY_TRAINING, val_images=12)))
    assert len(trained) == len(chosen)


def test_the_search_keeps_the_scaled_start_unless_a_finalist_beats_it_by_the_margin(tmp_path, monkeypatch):
    monkeypatch.setattr(AccuracyScorer, "train", lambda self, config, on_epoch=None: SimpleNamespace(accuracy=0.5))
    result, study = _search(tmp_path, _most_accurate_wins(tmp_path), n_trials=20)
    chosen = result.trials.set_index("trial").loc[choose(result.trials, 2)]
    scaled = set(chosen.index[chosen["start"] == "scaled"])
    assert scaled and len(scaled) < len(chosen)
    for trial, row in chosen.iterrows():  # the scaled starts 2 points less accurate than the other finalists
        attr = study.user_attrs[f"finalist:{row['config_key']}"]
        study.set_user_attr(f"finalist:{row['config_key']}", attr | {"accuracy": 0.80 if trial in scaled else 0.82})
    monkeypatch.setattr(AccuracyScorer, "train", lambda *a, **k: pytest.fail("nothing should be trained again"))
    result, _ = _search(tmp_path, _most_accurate_wins(tmp_path, margin=0.0), n_trials=20)
    assert result.ranking["trial"].iloc[0] not in scaled  # no margin: the most accurate wins
    result, _ = _search(tmp_path, _most_accurate_wins(tmp_path, margin=0.03), n_trials=20)
    assert result.ranking["trial"].iloc[0] in scaled  # 2 points are within the margin


@pytest.mark.slow
def test_a_second_training_seed_trains_only_it_and_ranks_by_the_mean(tmp_path, monkeypatch):
    seeds: list[int] = []
    real_train = AccuracyScorer.train

    def counting(self, config, on_epoch=None):
        seeds.append(self.seed)
        return real_train(self, config, on_epoch)

    monkeypatch.setattr(AccuracyScorer, "train", counting)
    _search(tmp_path, _most_accurate_wins(tmp_path))
    first = len(seeds)
    assert first >= 2 and set(seeds) == {10_000}
    result, study = _search(tmp_path, _most_accurate_wins(tmp_path, seeds=2))
    assert seeds[first:] == [20_000] * first  # the stored first seed is kept; only the second one trains
    runs: dict[str, list[float]] = {}
    for k, v in study.user_attrs.items():
        if k.startswith("finalist:"):
            runs.setdefault(k.removeprefix("finalist:").split("#")[0], []).append(v["accuracy"])
    assert all(len(a) == 2 for a in runs.values()) and len(runs) == first
    means = {key: sum(a) / 2 for key, a in runs.items()}
    trials = result.trials.drop_duplicates("config_key").set_index("config_key")
    for key, mean in means.items():
        assert trials.loc[key, "finalist_accuracy"] == pytest.approx(mean)
    assert result.ranking["finalist_accuracy"].iloc[0] == pytest.approx(max(means.values()))


def test_no_finalists_without_data_or_with_count_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(AccuracyScorer, "train", lambda *a, **k: pytest.fail("nothing should be trained"))
    missing = Finalists(count=2, data="fashion-mnist")
    monkeypatch.setattr("search.scoring.data.FASHION_MNIST_DIR", tmp_path / "not-installed")
    result, _ = _search(tmp_path / "a", missing)
    assert missing.unavailable and result.ranking["finalist_accuracy"].isna().all()
    result, _ = _search(tmp_path / "b", Finalists(count=0))
    assert result.ranking["score"].is_monotonic_decreasing


def test_bad_finalist_settings_name_the_flag(tmp_path):
    with pytest.raises(SearchInputError, match="--finalists -1"):
        Finalists(count=-1)
    with pytest.raises(SearchInputError, match="--finalist-seeds 0"):
        Finalists(seeds=0)
    with pytest.raises(SearchInputError, match="--finalist-data"):
        Finalists(data=str(tmp_path / "nope.npz")).dataset()
