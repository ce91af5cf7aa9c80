"""`python -m search compare`: the scaled Container-Light family, the member chosen at a budget, the arms end to end
on a tiny space with a fake latency, a fake scorer and a fake training protocol (nothing timed, seconds), the
random arm's sampler (`--sampler random`: a RandomSampler study with its own identity), and `compare-random`, the
alias of `compare --arms search,random`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from container import NetworkConfig, container_light_config
from search import Finalists
from search.scoring.data import load_data
from search.__main__ import COMMANDS
from search.__main__ import main as search_main
from search.experiments import compare as compare_module
from search.experiments.compare import ARMS, ArmsSettings, compare, main, parse_arms, parser, settings_from_args
from search.experiments.compare_arms_report import sentence
from search.experiments.evidence import VALIDATION_TRAINING, Trained
from search.experiments.shared_cache import SHARED_CACHE, collect_cache, share_cache
from search.scaled import best_member, measure_family, scale_config, scaled_family
from search.latency import Deployment, Latency
from search.settings import WorkerMismatchError
from search.space import SearchInputError
from search.study import SearchStudy

from tests.search_helpers import FAST_STOP, IMAGE, FakeLatency, FakeScorer, cost, settings, tiny_space


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
        return VALIDATION_TRAINING


def _npz(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.random((20, 8, 8)), y_train=np.arange(20) % 2, x_test=rng.random((6, 8, 8)),
             y_test=np.arange(6) % 2)
    return path


NO_FINALISTS = Finalists(count=0)  # search.finalists is tested in test_finalists.py; here it would train


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


def test_the_scaled_member_must_fit_the_search_re_check_headroom():
    members = scaled_family(base(), (0.5, 1.0), (1.0,))
    small, large = members
    latencies = [Latency(median_ms=ms, p90_ms=ms) for ms in (8.0, 9.8)]  # the large one within 5% of 10 ms
    rows = compare_module._scaled_rows(ArmsSettings(budgets=(10.0,), seeds=(0, 1)), members, latencies,
                                       lambda c: sum(s.dim for s in c.stages))
    assert {r["config"] for r in rows} == {small.config.to_json(sort_keys=True)}
    assert large.config.to_json(sort_keys=True) != small.config.to_json(sort_keys=True)


@pytest.mark.slow
def test_compare_end_to_end_with_fakes(tmp_path):
    fake, protocol = FakeLatency(_cheap_family), FakeProtocol()
    s = ArmsSettings(budgets=(3.0, 6.0), trials=6, seeds=(0, 1), objective="params", finalists=NO_FINALISTS,
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
            assert w["search_latency_ms"] <= 0.95 * w["budget_ms"]  # the search's re-check headroom
    assert report["over_budget"] == []
    # Every member of the family is trained and reported, chosen or not: the plot's family curve.
    family = report["family"]
    assert sorted((m["width"], m["depth"]) for m in family) == [(0.25, 0.5), (0.25, 1.0), (0.5, 0.5), (0.5, 1.0)]
    for m in family:
        config = NetworkConfig.from_dict(m["config"])
        assert m["latency_ms"] == pytest.approx(_cheap_family(config))
        assert m["accuracy"] == pytest.approx(0.5 + sum(st.depth * st.dim for st in config.stages) / 1000 + 0.0005)
    assert "## The scaled family" in (tmp_path / "cmp" / "report.md").read_text()
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
    s = ArmsSettings(budgets=(3.0,), arms=("search", "scaled"), trials=3, seeds=(0, 1), finalists=NO_FINALISTS,
                     deployment=Deployment(image_size=IMAGE, threads=1), space=tiny_space(), stop=FAST_STOP,
                     data=str(_npz(tmp_path)), train_seeds=(0,), widths=(0.25,), depths=(0.5,), remeasure_rounds=1,
                     bootstrap=20, out_dir=tmp_path / "o", lock_file=str(tmp_path / "lock"), progress=False)
    summary = compare(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=FakeProtocol())
    assert {(o["arm"], o["seed"]) for o in summary["over_budget"]} >= {("scaled", 0), ("scaled", 1)}
    md = (tmp_path / "o" / "report.md").read_text()
    assert "re-measured at" in md
    # A latency source of the caller's: the predictor does not model it, so the search arm ran without the gate.
    assert "without the latency predictor gate" in md and summary["search_predictor"] is False


@pytest.mark.slow
def test_search_against_random_shares_one_latency_cache_and_pairs_the_seeds(tmp_path):
    fake, protocol = FakeLatency(), FakeProtocol()
    s = ArmsSettings(budgets=(3.0,), arms=("search", "random"), trials=6, seeds=(0, 1), objective="params",
                     finalists=NO_FINALISTS,
                     deployment=Deployment(image_size=IMAGE, threads=1), space=tiny_space(), stop=FAST_STOP,
                     data=str(_npz(tmp_path)), train_seeds=(0,), remeasure_rounds=1, bootstrap=50,
                     out_dir=tmp_path / "cmp", lock_file=str(tmp_path / "lock"), progress=False)
    summary = compare(s, latency_source=fake, scorer=lambda _: FakeScorer(), protocol=protocol)
    winners = summary["winners"]
    assert sorted((w["arm"], w["seed"]) for w in winners) == [("random", 0), ("random", 1), ("search", 0),
                                                               ("search", 1)]
    assert all(w["config"] is not None and w["latency_ms"] <= 3.0 for w in winners)
    (budget,) = summary["per_budget"]
    assert list(budget["differences"]) == ["search - random"]
    acc = {(w["arm"], w["seed"]): w["accuracy"] for w in winners}
    d = budget["differences"]["search - random"]
    assert d["n"] == 2 and d["mean"] == pytest.approx(sum(acc[("search", x)] - acc[("random", x)] for x in (0, 1)) / 2)
    assert sentence("search - random", d, 3.0) in (tmp_path / "cmp" / "report.md").read_text()

    # each study starts from every latency the studies before it measured (run order: seed, then search, random)
    def keys(path: Path) -> set[str]:
        return set(json.loads(path.read_text())["entries"])

    earlier: set[str] = set()
    for seed in s.seeds:
        for arm in ("search", "random"):
            # no data set: a training-free objective's study does not name one
            own = keys(s.study(3.0, arm, seed, None).study_dir / SHARED_CACHE)
            assert earlier <= own, (seed, arm)
            earlier |= own
    assert keys(tmp_path / "cmp" / SHARED_CACHE) == earlier


def test_the_shared_cache_is_given_to_a_new_study_and_gathers_what_each_measured(tmp_path):
    shared, a, b = tmp_path / SHARED_CACHE, tmp_path / "a", tmp_path / "b"
    share_cache(shared, a)  # nothing measured yet: nothing to give
    assert not (a / SHARED_CACHE).exists()
    a.mkdir()
    (a / SHARED_CACHE).write_text(json.dumps({"version": 1, "entries": {"x": 1.0}}))
    collect_cache(shared, a)
    share_cache(shared, b)
    assert json.loads((b / SHARED_CACHE).read_text())["entries"] == {"x": 1.0}
    (b / SHARED_CACHE).write_text(json.dumps({"version": 1, "entries": {"x": 1.0, "y": 2.0}}))
    collect_cache(shared, b)
    (a / SHARED_CACHE).write_text("not json")  # a damaged study cache adds nothing and removes nothing
    collect_cache(shared, a)
    assert json.loads(shared.read_text())["entries"] == {"x": 1.0, "y": 2.0}
    share_cache(shared, a)  # a study's own cache is never overwritten
    assert (a / SHARED_CACHE).read_text() == "not json"


def test_each_pair_of_arms_gets_one_sentence_whichever_way_it_goes():
    def d(mean, lo, hi, n=5):
        return {"n": n, "mean": mean, "lo": lo, "hi": hi}

    assert sentence("search - random", d(0.01, 0.002, 0.02), 20) == (
        "At 20 ms, search beats random: +1.00 points [+0.20, +2.00] over 5 seeds.")
    assert sentence("search - random", d(-0.01, -0.02, -0.001), 20).startswith("At 20 ms, random beats search:")
    assert "search is not shown to beat random" in sentence("search - random", d(0.0, -0.01, 0.01), 20)
    assert "includes zero" in sentence("search - scaled", d(0.0, -0.01, 0.01), 35)
    assert "no seed gave both arms" in sentence("search - random", d(math.nan, math.nan, math.nan, 0), 20)


def test_the_search_arm_is_the_shipped_search_and_random_is_plain_random_search(tmp_path):
    data = load_data(_npz(tmp_path))
    s = ArmsSettings(budgets=(20.0,), out_dir=tmp_path / "cmp")
    search, rnd = s.study(20.0, "search", 3, data), s.study(20.0, "random", 3, data)
    assert (search.sampling.sampler, search.sampling.starts_from) == ("tpe", "scaled")
    assert search.finalists.count == Finalists().count and search.finalists.dataset() is data  # evaluation's data
    assert (rnd.sampling.sampler, rnd.sampling.starts_from, rnd.finalists.count) == ("random", "random", 0)
    assert search.name.endswith("-seed3") and rnd.name.endswith("-random-seed3")
    # The gate as python -m search ships it (on where it models what is measured); random search never has it.
    assert search.measuring.predictor is None and search.measuring.gates("fast", measured_here=True)
    assert rnd.measuring.predictor is False and not rnd.measuring.gates("fast", measured_here=True)
    ungated = ArmsSettings(budgets=(20.0,), predictor=False)
    assert ungated.study(20.0, "search", 3, data).measuring.predictor is False


def test_finalist_seeds_reach_the_search_arm_and_a_bad_count_names_the_flag(tmp_path, capsys):
    args = parser().parse_args(["--budget-ms", "20", "--finalist-seeds", "2", "--out-dir", str(tmp_path)])
    s = settings_from_args(args)
    assert s.study(20.0, "search", 0, load_data(_npz(tmp_path))).finalists.seeds == 2
    assert main(["--budget-ms", "20", "--finalist-seeds", "0", "--out-dir", str(tmp_path)]) == 2
    assert "--finalist-seeds 0" in capsys.readouterr().err


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


def test_a_random_search_worker_is_refused_by_a_tpe_study_of_the_same_name(tmp_path):
    same = {"study_name": "same"}
    SearchStudy(settings(tmp_path, storage=same), latency_source=FakeLatency(), scorer=FakeScorer()).open()
    with pytest.raises(WorkerMismatchError, match="--sampler tpe, this run asks for random"):
        SearchStudy(settings(tmp_path, sampling={"sampler": "random"}, storage=same), latency_source=FakeLatency(),
                    scorer=FakeScorer()).open()


def test_compare_random_is_compare_with_the_search_and_random_arms(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_compare(s):
        seen.append(s)
        return {"per_budget": [], "over_budget": [], "wall_s": 0.0, "files": {"report": "report.md"}}

    monkeypatch.setattr(compare_module, "compare", fake_compare)
    # as the lab notes ran it
    argv = ["--budget-ms", "35", "--trials", "30", "--seeds", "0", "1", "2", "3", "4", "--workers", "2",
            "--train-threads", "1", "--out-dir", str(tmp_path / "o"), "--no-progress"]
    assert search_main(["compare-random", *argv]) == 0
    assert search_main(["compare", *argv]) == 0
    alias, full = seen
    assert alias.arms == ("search", "random") and full.arms == ARMS
    assert alias.budgets == (35.0,) and alias.seeds == (0, 1, 2, 3, 4) and alias.workers == 2
    assert alias.training.threads == 1 and alias.out_dir == tmp_path / "o"
    assert "compare --arms search,random" in COMMANDS["compare-random"][1]
    capsys.readouterr()


def test_compare_random_bad_input_is_one_line_with_exit_2(tmp_path, capsys):
    for argv, flag in ((["--budget-ms", "0"], "--budget-ms"), (["--budget-ms", "5", "--seeds", "1"], "--seeds"),
                       (["--budget-ms", "5", "--data", str(tmp_path / "none.npz")], "--data"),
                       (["--budget-ms", "5", "--runtime", "nope"], "nope"), (["--trials", "0"], "--trials")):
        try:
            code = search_main(["compare-random", *argv, "--out-dir", str(tmp_path / "o"), "--no-progress"])
        except SystemExit as e:
            code = e.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and flag in err, (argv, err)


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
