"""The search starts from the scaled Container-Light family: projection into the space, which members start a study,
and that a study is seeded once, by TPE only."""
from __future__ import annotations

from dataclasses import replace

import optuna
import pytest

from container import NetworkConfig, container_light_config
from search import Deployment, Sampling, SearchInputError, SearchSpace, make_storage, run_search
from search.latency import CachedLatency, config_key
from search.scaled import STARTING_MEMBERS, measure_family, scale_config, scaled_family, starting_params
from search.trials import TrialRecord
from tests.search_helpers import FakeLatency, FakeScorer, cost, settings

IMAGE = 224


def base() -> NetworkConfig:
    return container_light_config(image_size=IMAGE, num_classes=1000)


def test_a_config_in_the_space_projects_onto_itself():
    space = SearchSpace.default()
    light = base()  # the space's top corner holds Container-Light exactly
    assert space.config_from_params(space.nearest_params(light), IMAGE) == light


def test_a_member_and_its_projection_share_one_latency_cache_entry():
    # Container-Light's presets spell mlp_ratio as ints, the space's params as floats: the same network must key
    # the same cache entry and re-measure list (a compare run once timed Container-Light twice under two keys,
    # 29.55 and 30.52 ms, fitting 30 ms as the search's winner and not as the scaled arm's member).
    space, light = SearchSpace.default(), base()
    projected = space.config_from_params(space.nearest_params(light), IMAGE)
    context = {"fingerprint": "f", "deployment": {}}
    assert projected.to_json(sort_keys=True) == light.to_json(sort_keys=True)
    assert config_key(projected, context) == config_key(light, context)


def test_a_start_reuses_the_measurement_of_the_same_scaled_member(tmp_path):
    # What compare does: the family measured first through the shared cache, then a study's start from it.
    fake = FakeLatency()
    cache = CachedLatency(fake, tmp_path / "latency_cache.json", {"fingerprint": "f"})
    members = scaled_family(base(), (1.0,), (1.0,))  # Container-Light itself, which the space holds exactly
    measure_family(members, cache)
    assert fake.total == 1
    assert len(starting_params(SearchSpace.default(), base(), 1e9, cache, widths=(1.0,), depths=(1.0,))) == 1
    assert fake.total == 1


def test_projection_snaps_each_field_to_the_nearest_choice():
    space = SearchSpace.default()
    member = scale_config(base(), 0.5, 0.5)  # dims 32/64/160/256, depths 2/2/4/2
    assert [s.dim for s in member.stages] == [32, 64, 160, 256]
    projected = space.config_from_params(space.nearest_params(member), IMAGE)
    assert [s.dim for s in projected.stages] == [32, 64, 128, 256]  # 160 ties 128 and 192: the smaller
    assert [s.depth for s in projected.stages] == [2, 2, 4, 2]
    assert [s.kind for s in projected.stages] == [s.kind for s in member.stages]
    stages = list(base().stages)
    stages[2] = replace(stages[2], depth=12, kind="mlp", kernel_size=9, mlp_ratio=8.0)  # outside stage 3's choices
    stage = space.config_from_params(space.nearest_params(base().replace(stages=tuple(stages))), IMAGE).stages[2]
    assert (stage.depth, stage.kind, stage.kernel_size, stage.mlp_ratio) == (8, "conv", 7, 4.0)


def test_a_space_of_another_stage_count_takes_no_projection():
    two_stages = SearchSpace.from_dict({"stages": [{"depth": 1, "dim": [16]}, {"depth": 1, "dim": [32]}]})
    assert two_stages.nearest_params(base()) is None


def test_starting_params_are_the_fitting_members_slowest_first():
    space, budget = SearchSpace.default(), 150.0
    fake = FakeLatency(cost)
    starts = [space.config_from_params(p, IMAGE) for p in starting_params(space, base(), budget, fake)]
    projected = {space.config_from_params(space.nearest_params(m.config), IMAGE).to_json()
                 for m in scaled_family(base())}
    costs = [cost(NetworkConfig.from_json(c)) for c in projected]
    fitting = sorted((ms for ms in costs if ms <= budget), reverse=True)
    assert len(fitting) > STARTING_MEMBERS, "the fake latencies must leave more fitting members than are taken"
    assert [cost(c) for c in starts] == fitting[:STARTING_MEMBERS]
    assert starting_params(space, base(), 1.0, fake) == []  # nothing fits: the sampler starts on its own


def _study(tmp_path, **sampling) -> tuple[object, optuna.Study]:
    s = settings(tmp_path, budget_ms=90.0, space=SearchSpace.default(), deployment=Deployment(image_size=IMAGE,
                 threads=1), sampling={"n_trials": 8, **sampling}, report={"recheck_margin": 0.0})
    result = run_search(s, latency_source=FakeLatency(cost), scorer=FakeScorer())
    return result, optuna.load_study(study_name="t", storage=make_storage(None, tmp_path / "results" / "t"))


def test_tpe_starts_from_the_family_once(tmp_path):
    result, study = _study(tmp_path)
    trials = study.get_trials()
    expected = [space_config.to_json() for space_config in (
        SearchSpace.default().config_from_params(p, IMAGE)
        for p in starting_params(SearchSpace.default(), base(), 90.0, FakeLatency(cost)))]
    first = [NetworkConfig.from_dict(TrialRecord.of(t).config).to_json() for t in trials[:len(expected)]]
    assert first == expected
    assert [TrialRecord.of(t).start for t in trials] == ["scaled"] * len(expected) + [None] * (8 - len(expected))
    assert list(result.trials["start"][:len(expected)]) == ["scaled"] * len(expected)
    # The winner is at least the best starting member by the objective (no re-check headroom here).
    best_start = max(FakeScorer().evaluate(NetworkConfig.from_json(c)).score for c in expected)
    assert result.ranking["score"].iloc[0] >= best_start
    _study(tmp_path, n_trials=12)  # resumed: no second family
    assert sum(TrialRecord.of(t).start == "scaled" for t in study.get_trials()) == len(expected)


@pytest.mark.parametrize("sampling", [{"sampler": "random"}, {"start": "random"}])
def test_random_search_and_start_random_take_no_family(tmp_path, sampling):
    _, study = _study(tmp_path, **sampling)
    assert not any(TrialRecord.of(t).start for t in study.get_trials())


def test_bad_start_names_the_flag():
    with pytest.raises(SearchInputError, match="--start 'family'"):
        Sampling(start="family")
