"""validate-proxy: data from inside scikit-learn, scaled architectures, statistics, and a tiny end-to-end run."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from container import NetworkConfig
from search import SearchSpace
from search.sampling import sample_configs
from search.validate import (ValidationSettings, digits, main, noise_ceiling, rank_correlations, scale_config,
                             validate_proxy)
from search.space import SearchInputError
from tests.search_helpers import TINY_SPACE


def test_digits_ship_with_scikit_learn_and_split_stratified():
    x_train, _, x_test, y_test = digits(16)
    assert x_train.shape == (1347, 1, 16, 16) and x_test.shape == (450, 1, 16, 16)
    assert abs(float(x_train.mean())) < 1e-4 and float(x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert set(y_test.tolist()) == set(range(10))
    assert x_train.shape == digits(16)[0].shape and bool((digits(16)[0] == x_train).all())  # fixed split


def test_scaling_keeps_the_structure_of_every_sampled_architecture():
    for config in sample_configs(SearchSpace.default(), 40, 0, 224):
        small = scale_config(config, width_div=4, image_size=32)
        assert small.image_size == 32 and small.in_chans == 1 and small.num_classes == 10
        assert small.feature_sizes() == [16, 8, 4, 2]
        for big, s in zip(config.stages, small.stages):
            assert (s.depth, s.kind, s.kernel_size, s.mlp_ratio, s.heads) == \
                (big.depth, big.kind, big.kernel_size, big.mlp_ratio, big.heads)
            assert s.dim * 4 == big.dim and s.head_dim * 4 == big.head_dim
    with pytest.raises(SearchInputError, match="image-size"):
        scale_config(sample_configs(SearchSpace.default(), 1, 0, 224)[0], image_size=24)


def test_rank_correlations_and_bootstrap_intervals():
    x = np.arange(30, dtype=float)
    perfect = rank_correlations(x, x * 2 + 1, n_boot=200, seed=0)
    assert perfect["spearman"] == pytest.approx(1.0) and perfect["kendall"] == pytest.approx(1.0)
    assert perfect["spearman_lo"] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = rank_correlations(x, x + rng.normal(0, 10, 30), n_boot=500, seed=0)
    assert noisy["spearman_lo"] < noisy["spearman"] < noisy["spearman_hi"]
    # A degenerate score (-inf) ranks below every finite one instead of breaking the statistics.
    with_inf = rank_correlations(np.array([-math.inf, 1.0, 2.0, 3.0]), np.array([0.1, 0.2, 0.3, 0.4]),
                                 n_boot=50, seed=0)
    assert with_inf["spearman"] == pytest.approx(1.0)


def test_noise_ceiling_from_two_seeds():
    acc = pd.DataFrame([{"arch": a, "seed": s, "accuracy": a / 10 + (0.001 if s else 0)}
                        for a in range(10) for s in (0, 1)])
    c = noise_ceiling(acc, [0, 1], n_boot=100, seed=0)
    assert c["spearman"] == pytest.approx(1.0) and c["spearman_brown"] == pytest.approx(1.0)
    assert c["seed_std_mean"] == pytest.approx(0.001 / math.sqrt(2), rel=1e-3)


def test_settings_are_checked():
    with pytest.raises(SearchInputError, match="two distinct"):
        ValidationSettings(seeds=(0,)).validate()
    with pytest.raises(SearchInputError, match="archs"):
        ValidationSettings(archs=2).validate()
    assert main(["--seeds", "1", "--archs", "4"]) == 2


@pytest.mark.slow
def test_a_tiny_validation_end_to_end(tmp_path):
    space = SearchSpace.from_dict(TINY_SPACE)
    settings = ValidationSettings(archs=4, seeds=(0, 1), epochs=1, image_size=16, width_div=2, bootstrap=50,
                                  proxy_inits=1, proxy_batch=2, threads=1, default_objective="naswot")
    summary = validate_proxy(settings, space, tmp_path)
    assert {r["score"] for r in summary["correlations"]} == {"flops", "naswot", "params", "synflow"}
    for name in ("report.md", "accuracies.csv", "scores.csv", "correlations.csv", "report.json",
                 "scores_vs_accuracy.png"):
        assert (tmp_path / name).exists(), name
    acc = pd.read_csv(tmp_path / "accuracies.csv")
    assert len(acc) == 8 and acc["accuracy"].between(0, 1).all()
    report = (tmp_path / "report.md").read_text()
    assert "noise ceiling" in report and "Spearman" in report
    rho = {r["score"]: r["spearman"] for r in summary["correlations"]}
    assert ("does not beat #params" in (summary["warning"] or "")) == (not rho["naswot"] > rho["params"])
    assert ("does not beat #params" in report) == (not rho["naswot"] > rho["params"])
    # four architectures and two one-epoch seeds can never be strong evidence
    assert "weak evidence" in summary["warning"] and "weak evidence" in report
    assert json.loads((tmp_path / "report.json").read_text())["supported_objective"] == summary["supported_objective"]
    NetworkConfig.from_json(pd.read_csv(tmp_path / "scores.csv")["config"][0])
