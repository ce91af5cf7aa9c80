"""`python -m search compare`: the scaled Container-Light family, the member chosen at a budget, and the three arms
end to end on a tiny space with a fake latency, a fake scorer and a fake training protocol (nothing timed, seconds)."""
from __future__ import annotations

import json

import pytest

from container import NetworkConfig, container_light_config
from search.__main__ import COMMANDS
from search.__main__ import main as search_main
from search.experiments.compare import ArmsSettings, compare, main, parse_arms
from search.experiments.scaled import best_member, measure_family, scale_config, scaled_family
from search.latency import Deployment
from search.space import SearchInputError

from tests.search_helpers import FAST_STOP, IMAGE, FakeLatency, FakeScorer, cost, tiny_space
from tests.test_compare_random import FakeProtocol, _npz


def base() -> NetworkConfig:
    return container_light_config(image_size=IMAGE, num_classes=10)


def test_the_scaled_family_applies_the_multipliers_and_keeps_heads_valid():
    b = base()
    members = scaled_family(b, (0.25, 0.5, 0.75, 1.0), (0.5, 0.75, 1.0))
    assert len(members) == len({m.config.to_json(sort_keys=True) for m in members}) and len(members) >= 10
    for m in members:
        c = NetworkConfig.from_json(m.config.to_json())  # a valid config that round-trips
        assert c.image_size == IMAGE and c.num_classes == 10 and c == m.config
        for s, s0 in zip(c.stages, b.stages):
            assert s.head_dim == s0.head_dim and s.dim % s.heads == 0 and s.heads >= 1
            assert s.dim == max(1, round(s0.dim * m.width / s0.head_dim)) * s0.head_dim
            assert s.depth == max(1, round(s0.depth * m.depth)) >= 1
            assert (s.kind, s.kernel_size, s.mlp_ratio, s.patch_size) == (s0.kind, s0.kernel_size, s0.mlp_ratio,
                                                                           s0.patch_size)
    one = next(m for m in members if (m.width, m.depth) == (1.0, 1.0))
    assert one.config == b and scale_config(b, 1, 1) == b
    with pytest.raises(SearchInputError, match="--widths"):
        scaled_family(b, (0,), (1,))


def test_the_member_chosen_at_a_budget_is_the_best_fitting_one_by_the_objective():
    members = scaled_family(base())
    latencies = measure_family(members, FakeLatency())
    scorer = FakeScorer()

    def score(config):
        return scorer.evaluate(config).score

    for budget in (50.0, 100.0, 150.0, 250.0):
        chosen = best_member(members, latencies, budget, score)
        fitting = [m for m, lat in zip(members, latencies) if lat.deciding_ms <= budget]
        assert fitting, budget
        member, latency = chosen
        assert latency.deciding_ms == cost(member.config) <= budget
        assert score(member.config) == max(score(m.config) for m in fitting)
    assert best_member(members, latencies, 1.0, score) is None


def _cheap_family(config: NetworkConfig) -> float:
    """The tiny space's fake latency; the four-stage scaled family ten times cheaper, so that it fits too."""
    return cost(config) / (10 if len(config.stages) == 4 else 1)


@pytest.mark.slow
def test_compare_end_to_end_with_fakes(tmp_path):
    fake, protocol = FakeLatency(_cheap_family), FakeProtocol()
    s = ArmsSettings(budgets=(3.0, 6.0), trials=6, seeds=(0, 1), objective="params",
                     deployment=Deployment(image_size=IMAGE, threads=1), space=tiny_space(), stop=FAST_STOP,
                     data=str(_npz(tmp_path)), train_seeds=(0, 1), widths=(0.25, 0.5), depths=(0.5, 1.0),
                     remeasure_rounds=2, bootstrap=50, out_dir=tmp_path / "cmp", lock_file=str(tmp_path / "lock"),
                     progress=False)
    summary = compare(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=protocol)
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    winners = report["winners"]
    assert sorted((w["budget_ms"], w["arm"], w["seed"]) for w in winners) == sorted(
        (b, a, seed) for b in (3.0, 6.0) for a in ("search", "random", "scaled") for seed in (0, 1))
    for w in winners:
        assert {"budget_ms", "arm", "seed", "accuracy", "latency_ms", "config"} <= set(w)
        config = NetworkConfig.from_dict(w["config"])
        assert w["latency_ms"] == pytest.approx(_cheap_family(config)) and w["latency_ms"] <= w["budget_ms"]
        width = sum(st.depth * st.dim for st in config.stages)
        assert w["accuracy"] == pytest.approx(0.5 + width / 1000 + 0.0005)
        if w["arm"] == "scaled":
            assert len(config.stages) == 4 and w["width"] in (0.25, 0.5) and w["depth"] in (0.5, 1.0)
    assert report["over_budget"] == []
    for b in report["per_budget"]:
        acc = {(w["arm"], w["seed"]): w["accuracy"] for w in winners if w["budget_ms"] == b["budget_ms"]}
        for a, other in (("search", "scaled"), ("search", "random")):
            d = b["differences"][f"{a} - {other}"]
            assert d["n"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
            assert d["mean"] == pytest.approx(sum(acc[(a, x)] - acc[(other, x)] for x in (0, 1)) / 2)
    md = (tmp_path / "cmp" / "report.md").read_text()
    assert "paired difference search - scaled" in md and "every winner fits its budget" in md
    assert (tmp_path / "cmp" / "accuracy_latency.png").exists() and summary["files"]["report"].endswith("report.md")
    # every winner trained once per training seed; a rerun resumes: no training, no re-measurement
    assert len(protocol.calls) == len(set(protocol.calls))
    protocol.calls.clear()
    before = fake.total
    compare(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=protocol)
    assert protocol.calls == [] and fake.total == before


def test_a_winner_over_budget_when_re_measured_is_reported(tmp_path):
    # the re-measurement (second call of a config) doubles the latency: every winner is then over budget
    fake = FakeLatency(_cheap_family, remeasure=lambda c: 2 * _cheap_family(c))
    s = ArmsSettings(budgets=(3.0,), arms=("search", "scaled"), trials=3, seeds=(0, 1),
                     deployment=Deployment(image_size=IMAGE, threads=1), space=tiny_space(), stop=FAST_STOP,
                     data=str(_npz(tmp_path)), train_seeds=(0,), widths=(0.25,), depths=(0.5,), remeasure_rounds=1,
                     bootstrap=20, out_dir=tmp_path / "o", lock_file=str(tmp_path / "lock"), progress=False)
    summary = compare(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=FakeProtocol())
    assert {(o["arm"], o["seed"]) for o in summary["over_budget"]} >= {("scaled", 0), ("scaled", 1)}
    assert "re-measured at" in (tmp_path / "o" / "report.md").read_text()


def test_bad_input_is_one_line_naming_the_flag_with_exit_2(tmp_path, capsys):
    assert "compare" in COMMANDS and "compare-random" in COMMANDS
    for argv, flag in ((["--budget-ms", "0"], "--budget-ms"), (["--budget-ms", "5", "x"], "--budget-ms"),
                       (["--budget-ms", "5", "--arms", "search,grid"], "--arms"),
                       (["--budget-ms", "5", "--seeds", "1"], "--seeds"),
                       (["--budget-ms", "5", "--widths", "0"], "--widths"),
                       (["--budget-ms", "5", "--image-size", "100"], "--image-size"),
                       (["--budget-ms", "5", "--data", str(tmp_path / "none.npz")], "--data"),
                       (["--budget-ms", "5", "--runtime", "nope"], "nope"), (["--trials", "0"], "--trials")):
        for run in (main, lambda a: search_main(["compare", *a])):
            try:
                code = run([*argv, "--out-dir", str(tmp_path / "o"), "--no-progress"])
            except SystemExit as e:
                code = e.code
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and flag in err, (argv, err)
    assert parse_arms("scaled,search") == ("search", "scaled")
