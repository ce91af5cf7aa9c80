"""The latency predictor: its parts, table, calibration, cache file and the search's gate.

Measurements here are of tiny parts at 32x32 with a short stop rule; nothing asserts how fast
this machine is. The accuracy itself is published by `python -m search predictor-report`.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import optuna
import pytest

from search import CachedLatency, Deployment, MachineLock, PredictedLatency, PredictorGate, SearchSpace
from search.parts import Part, network_parts
from search.predictor import LatencyPredictor, NotCalibratedError, fit_calibration
from search.experiments.predictor_report import accuracy
from search.space import config_id, sample_configs
from search.trials import feasible
from tests.search_helpers import FAST_STOP, IMAGE, FakeLatency, tiny_space


def predictor(tmp_path, **kw) -> LatencyPredictor:
    return LatencyPredictor(Deployment(image_size=IMAGE, threads=1), stop=FAST_STOP, network_stop=FAST_STOP,
                            lock=MachineLock(tmp_path / "lock"), directory=tmp_path / "predictor", **kw)


def test_sampling_is_seeded_distinct_and_excludes():
    space = tiny_space()
    a = sample_configs(space, 10, 1, IMAGE)
    assert [config_id(c) for c in a] == [config_id(c) for c in sample_configs(space, 10, 1, IMAGE)]
    assert len({config_id(c) for c in a}) == 10
    b = sample_configs(space, 10, 2, IMAGE, exclude=[config_id(c) for c in a])
    assert not {config_id(c) for c in a} & {config_id(c) for c in b}
    with pytest.raises(ValueError, match="distinct"):
        sample_configs(SearchSpace.from_dict({"stages": [{"depth": 1, "dim": [8], "head_dim": [8], "kernel_size": [3],
                                                          "patch_size": 2}]}), 2, 0, 8)


def test_parts_cover_the_network_and_drop_fields_that_cannot_matter():
    config = sample_configs(SearchSpace.default(), 1, 0, 224)[0]
    parts = network_parts(config)
    assert [p.part for p, _ in parts] == ["embed", "block"] * 4 + ["head"]
    assert sum(n for p, n in parts if p.part == "block") == sum(s.depth for s in config.stages)
    assert [p.side for p, _ in parts if p.part == "block"] == config.feature_sizes()
    conv = Part.block("conv", 64, 2, 7, 4.0, 28, "tied")
    assert (conv.heads, conv.kernel_size, conv.mixing) == (0, 7, "")  # a depthwise conv has no heads
    attn = Part.block("attn", 64, 2, 7, 4.0, 28, "tied")
    assert (attn.heads, attn.kernel_size, attn.mixing) == (2, 0, "")  # attention has no kernel
    assert Part.block("attn", 64, 2, 3, 4.0, 28, "tied") == attn
    mix = Part.block("mix", 64, 2, 5, 4.0, 28, "free")
    assert (mix.heads, mix.kernel_size, mix.mixing) == (2, 5, "free")


def test_every_part_builds_and_is_measured_through_bench(tmp_path):
    p = predictor(tmp_path)
    config = tiny_space().largest(IMAGE)
    missing = p.missing([config])
    assert {m.part for m in missing} == {"embed", "block", "head"}
    p.measure_parts(missing)
    assert p.missing([config]) == []
    assert p.measured_parts == len(missing)
    sums = p.sums(config)
    assert sums["blocks_ms"] > 0 and sums["other_ms"] > 0
    # The table is a JSON file named by the hardware fingerprint, shared by the next predictor.
    path = tmp_path / "predictor" / f"{Deployment(image_size=IMAGE, threads=1).fingerprint()}.json"
    assert p.path == path and path.exists()
    data = json.loads(path.read_text())
    assert data["fingerprint"] == p.fingerprint and len(data["entries"]) == len(missing)
    again = predictor(tmp_path)
    assert again.missing([config]) == [] and again.sums(config) == sums and again.measured_parts == 0


def test_a_table_from_another_machine_is_not_read(tmp_path):
    p = predictor(tmp_path)
    p.path.parent.mkdir(parents=True)
    p.path.write_text(json.dumps({"fingerprint": "elsewhere", "entries": {"x": {}}, "calibrations": {"y": {}}}))
    assert predictor(tmp_path).entries == {}


def test_a_table_measured_on_one_runtime_is_never_used_for_another(tmp_path):
    fast, reference = (Deployment(image_size=IMAGE, threads=1, runtime=r) for r in ("fast", "reference"))
    assert Deployment().runtime == "fast"
    block = Part.block("mix", 16, 2, 3, 2.0, 8, "tied")
    assert block.key(fast) != block.key(reference) and block.key(fast).endswith("|fast")
    assert block.measured_at(fast) == fast  # a block is timed on the deployment's runtime itself
    # container.optimize takes blocks and networks only: on fast, an embedding is timed as its eager module.
    embed = Part("embed", 16, 8, in_chans=3, patch_size=4)
    assert embed.measured_at(fast).runtime == "reference" and embed.key(fast).endswith("|fast")
    configs = sample_configs(tiny_space(), 5, 0, IMAGE)
    p = LatencyPredictor(reference, lock=contextlib.nullcontext(), directory=tmp_path / "predictor")
    parts = p.missing(configs)
    for part in parts:  # a synthetic table on the reference (nothing timed)
        p.entries[part.key(reference)] = {"part": {}, "median_ms": 1.0}
    p.calibrate(configs, [10.0 + i for i in range(len(configs))])
    assert p.missing(configs) == [] and p.path.exists()
    other = LatencyPredictor(fast, lock=contextlib.nullcontext(), directory=tmp_path / "predictor")
    assert other.path == p.path and len(other.entries) == len(parts)  # one file per machine...
    assert other.missing(configs) == parts  # ...but no entry measured on another runtime is used
    assert other.calibration is None and p.calibration is not None


def test_calibration_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(5, 200, 20), rng.uniform(1, 10, 20), np.ones(20)])
    y = x @ np.array([1.2, 0.8, 2.0])
    np.testing.assert_allclose(fit_calibration(x, y), [1.2, 0.8, 2.0], rtol=1e-6)


def test_calibrate_predict_and_cache(tmp_path):
    p = predictor(tmp_path)
    configs = sample_configs(tiny_space(), 6, 0, IMAGE)
    with pytest.raises(NotCalibratedError):
        p.predict(configs[0])
    # Measured latencies supplied: exactly 1.5 x the table sum plus 0.1 ms.
    measured = [1.5 * p.raw_sum(c) + 0.1 for c in configs]
    cal = p.calibrate(configs, measured)
    assert cal.n == 6 and cal.fit_mape < 1.0
    for c, m in zip(configs, measured):
        assert p.predict(c) == pytest.approx(m, rel=0.01)
    assert PredictedLatency(p).measure(configs[0]).source == "predicted"
    reloaded = predictor(tmp_path)
    assert reloaded.calibration.coef == cal.coef
    assert reloaded.predict(configs[1]) == pytest.approx(p.predict(configs[1]))
    # The calibration is per deployment setting: another batch size has none.
    other = LatencyPredictor(Deployment(image_size=IMAGE, threads=1, batch_size=2), directory=tmp_path / "predictor")
    assert other.calibration is None


def test_ensure_calibrated_measures_whole_networks_through_bench(tmp_path):
    p = predictor(tmp_path)
    told: list[tuple[int, int]] = []
    cal = p.ensure_calibrated(tiny_space(), n=5, seed=3, on_measure=lambda done, total, _: told.append((done, total)))
    assert cal.n == 5 and all(m > 0 for m in cal.fit_measured_ms)
    assert told and told[-1][0] == told[-1][1] >= 2 * len(p.entries)  # every sweep over the parts, then done
    assert p.on_measure is None  # the callback was for this call only
    assert p.ensure_calibrated(tiny_space(), n=5, seed=3).fitted_at == cal.fitted_at  # cached


class _FixedPredictor:
    def __init__(self, fn):
        self.fn = fn

    def predict(self, config):
        return self.fn(config)


def test_gate_rejects_clear_misses_and_measures_the_rest_for_real():
    from tests.search_helpers import cost

    real = FakeLatency()
    configs = sample_configs(tiny_space(), 12, 0, IMAGE)
    gate = PredictorGate(_FixedPredictor(cost), real, budget_ms=3.0, margin=0.1)
    out = {config_id(c): gate.measure(c) for c in configs}
    for c in configs:
        lat = out[config_id(c)]
        if cost(c) > 3.3:
            assert lat.source == "predicted" and lat.median_ms == cost(c)
        else:
            assert lat.source == "fake"
    assert gate.rejected == sum(cost(c) > 3.3 for c in configs) > 0
    assert gate.measured == real.total == len(configs) - gate.rejected
    # Something measured for real once is measured for real again, whatever the predictor says.
    fits = next(c for c in configs if cost(c) <= 3.0)
    gate.predictor = _FixedPredictor(lambda c: 1e9)
    assert gate.measure(fits).source == "fake"


def test_gate_never_screens_what_the_cache_holds_and_the_cache_never_holds_a_prediction(tmp_path):
    configs = sample_configs(tiny_space(), 6, 0, IMAGE)
    cache = CachedLatency(FakeLatency(), tmp_path / "cache.json", {"fingerprint": "x"},
                          lock=MachineLock(tmp_path / "lock"))
    cache.measure(configs[0])
    gate = PredictorGate(_FixedPredictor(lambda c: 1e9), cache, budget_ms=3.0)  # predicts everything over budget
    first = gate.measure(configs[0])
    assert first.source == "fake" and first.cached and first.predicted_ms is None  # measured before: unscreened
    rejected = gate.measure(configs[1])
    assert rejected.source == "predicted" and rejected.predicted_ms == rejected.median_ms == 1e9
    assert cache.lookup(configs[1]) is None
    # A gate behind the cache (a custom source stack): its prediction is passed on, never stored.
    behind = CachedLatency(gate, tmp_path / "behind.json", {"fingerprint": "x"}, lock=MachineLock(tmp_path / "lock"))
    assert behind.measure(configs[2]).source == "predicted" and behind.lookup(configs[2]) is None
    passed = PredictorGate(_FixedPredictor(lambda c: 0.5), cache, budget_ms=3.0).measure(configs[3])
    assert passed.source == "fake" and passed.predicted_ms == 0.5 and not passed.cached


def test_a_predicted_latency_is_never_feasible():
    ok = optuna.trial.create_trial(value=1.0, constraints={"latency_ms": -1.0}, user_attrs={"latency_source": "bench"})
    predicted = optuna.trial.create_trial(value=1.0, constraints={"latency_ms": -1.0},
                                          user_attrs={"latency_source": "predicted"})
    assert feasible(ok) and not feasible(predicted)


def test_gate_in_a_search_records_rejections_as_infeasible(tmp_path):
    from search import run_search
    from tests.search_helpers import FakeScorer, cost, settings

    real = FakeLatency()
    gate = PredictorGate(_FixedPredictor(cost), real, budget_ms=3.0, margin=0.1)
    result = run_search(settings(tmp_path, sampling={"n_trials": 14}), latency_source=gate, scorer=FakeScorer())
    t = result.trials
    assert gate.rejected > 0
    rejected = t[t["latency_median_ms"] > 3.3]
    assert not rejected["feasible"].any()
    assert set(result.ranking["trial"]) <= set(t.loc[t["latency_median_ms"] <= 3.0, "trial"])
    assert not result.ranking.empty


def test_accuracy_figures():
    measured = np.array([10.0, 20.0, 30.0, 40.0])
    predicted = np.array([10.5, 21.5, 30.0, 48.0])  # +5%, +7.5%, 0%, +20%
    a = accuracy(predicted, measured)
    assert a["within_10pct"] == 0.75 and a["within_5pct"] == 0.5
    assert a["mape_pct"] == pytest.approx((5 + 7.5 + 0 + 20) / 4)
    assert a["spearman_rho"] == pytest.approx(1.0)


def test_search_with_predictor_flag_screens_before_measuring(tmp_path):
    """`--predictor` end to end through run_search, with a synthetic table (no timing): the predictor
    equals the fake latency, so exactly the candidates over budget x 1.1 are rejected unmeasured."""
    from dataclasses import asdict

    from search import run_search
    from tests.search_helpers import FakeScorer, cost, settings

    s = settings(tmp_path, sampling={"n_trials": 16},
                 measuring={"predictor": True, "predictor_margin": 0.1, "predictor_dir": tmp_path / "predictor"})
    p = LatencyPredictor(s.deployment, directory=tmp_path / "predictor", lock=contextlib.nullcontext())
    configs = sample_configs(s.space, 40, 0, IMAGE, max_tries=10_000)
    for part in p.missing(configs + [s.space.smallest(IMAGE), s.space.largest(IMAGE)]):
        ms = part.dim * (part.side ** 0) / 24.0 if part.part == "block" else 0.0  # block cost = dim / 24 per block
        p.entries[part.key(s.deployment)] = {"part": asdict(part), "median_ms": ms}
    p.calibrate(configs[:8], [cost(c) for c in configs[:8]])
    assert p.predict(configs[9]) == pytest.approx(cost(configs[9]), rel=1e-6)

    real = FakeLatency()
    result = run_search(s, latency_source=real, scorer=FakeScorer())
    t = result.trials
    rejected = t[t["latency_source"] == "predicted"]
    assert len(rejected) > 0 and result.predictor_rejected == len(rejected)
    assert (rejected["latency_median_ms"] > 3.3 - 1e-9).all() and not rejected["feasible"].any()
    assert (rejected["latency_predicted_ms"] == rejected["latency_median_ms"]).all()
    assert not rejected["latency_cached"].astype(bool).any()
    measured = t[t["latency_source"] == "fake"]
    assert measured["latency_predicted_ms"].notna().any()  # screened, let through, then measured
    assert (measured["latency_predicted_ms"].dropna() <= 3.3 + 1e-9).all()
    # Nothing rejected was measured: the fake source never saw a rejected config.
    from container import NetworkConfig

    seen = set(real.calls)
    assert not {NetworkConfig.from_json(c).to_json() for c in rejected["config"]} & seen
    assert {NetworkConfig.from_json(c).to_json() for c in measured["config"]} <= seen
    assert not result.ranking.empty and set(result.ranking["trial"]) <= set(measured["trial"])
    # --trials counts the candidates measured: the rejected ones come on top of the 16.
    assert len(measured) == 16 and len(t) == 16 + len(rejected)
    # Only measurements are cached: a prediction never passes off as a latency in a later run.
    cache = json.loads((result.study_dir / "latency_cache.json").read_text())
    assert {e["latency"]["source"] for e in cache["entries"].values()} == {"fake"}
    report = (result.study_dir / "report.md").read_text()
    assert "latency predictor" in report


def test_a_rejected_candidate_does_not_count_toward_the_target():
    from search.trials import counts_toward_target

    measured = optuna.trial.create_trial(value=1.0, user_attrs={"latency_source": "bench"})
    rejected = optuna.trial.create_trial(value=1.0, user_attrs={"latency_source": "predicted"})
    assert counts_toward_target(measured) and not counts_toward_target(rejected)


def test_a_predictor_that_rejects_everything_stops_at_ten_proposals_per_trial(tmp_path):
    from search import run_search
    from search.study import MAX_PROPOSALS_PER_TRIAL
    from tests.search_helpers import FakeScorer, settings

    real = FakeLatency()
    gate = PredictorGate(_FixedPredictor(lambda c: 1e9), real, budget_ms=3.0)
    s = settings(tmp_path, sampling={"n_trials": 2}, measuring={"check_smallest": False})
    result = run_search(s, latency_source=gate, scorer=FakeScorer())
    assert len(result.trials) == MAX_PROPOSALS_PER_TRIAL * 2 == gate.rejected and not real.calls


def test_the_cli_predictor_flag():
    import argparse

    from search.arguments import add_search_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_search_arguments(p)

    def resolved(*flags: str) -> bool:
        return settings_from_args(p.parse_args(list(flags)), 10.0, SearchSpace.default()).measuring.predictor

    assert resolved() is None and resolved("--predictor") is True and resolved("--no-predictor") is False


def test_the_gate_is_on_by_default_where_the_predictor_models_what_is_measured(tmp_path):
    """The default (None) gates a search that measures on this machine, on any runtime but aot (whose table would
    compile a package per part); not one given a latency source of the caller's, which the predictor does not
    model; and an explicit choice always wins."""
    from search.study import SearchStudy
    from tests.search_helpers import FakeScorer, settings

    def gate(runtime: str = "fast", source: object = None, **measuring: object):
        s = settings(tmp_path, deployment=Deployment(image_size=IMAGE, threads=1, runtime=runtime),
                     measuring={"predictor": None, "predictor_dir": tmp_path / "predictor", **measuring})
        return SearchStudy(s, latency_source=source, scorer=FakeScorer()).gate

    assert gate() is not None and gate(runtime="onnxruntime") is not None
    assert gate(runtime="aot") is None and gate(source=FakeLatency()) is None
    assert gate(predictor=False) is None and gate(runtime="aot", predictor=True) is not None
    assert gate(source=FakeLatency(), predictor=True) is not None
    assert not (tmp_path / "predictor").exists()  # nothing is built until a search runs


def test_the_predictors_first_use_shows_a_progress_bar():
    import io

    from rich.console import Console

    from search.progress import predictor_progress

    out = io.StringIO()
    with predictor_progress(console=Console(file=out, width=160)) as on_measure:
        on_measure(0, 3, "block conv d64")
        on_measure(3, 3, "")
    text = out.getvalue()
    assert "latency predictor, first use" in text and "3/3" in text and "calibrating on whole networks" in text
    with predictor_progress(enabled=False) as quiet:
        quiet(1, 2, "x")  # a no-op, and nothing to see
