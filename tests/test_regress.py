"""The regression gate: its decision on synthetic samples, its baselines and history, and its worker's
interleaved measurement (in-process, and as the process the gate starts, against a stand-in older tree).
Its rows on the runtimes, and the gate on the fast path: tests/test_regress_runtimes.py."""
import argparse
import contextlib
import json
import textwrap

import numpy as np
import pytest
from rich.console import Console

from bench import BenchInputError, regress
from bench.regress import history
from bench.env import REPO_ROOT
from bench.regress import FigureChange, Round, Side, compare, compare_deterministic, decide
from bench.regress import worker as regress_worker
from bench.regress.worker import Worker, normalise


def lognormal(n, scale=1.0, spread=0.04, seed=0):
    return list(scale * np.exp(np.random.default_rng(seed).normal(0.0, spread, n)))


# --- the time decision ---------------------------------------------------------------------------


def test_a_clear_slowdown_fails():
    verdict = decide(lognormal(16, seed=1), lognormal(8, scale=1.25, seed=2))
    assert verdict.regressed
    assert verdict.change == pytest.approx(0.25, abs=0.05)
    assert verdict.p_slower < 0.01


def test_identical_distributions_pass():
    for seed in range(50):
        verdict = decide(lognormal(16, seed=seed), lognormal(8, seed=1000 + seed))
        assert not verdict.regressed
        assert abs(verdict.change) < 0.10


def test_identical_samples_pass():
    sample = lognormal(8, seed=3)
    verdict = decide(sample, sample)
    assert verdict.change == pytest.approx(0.0, abs=1e-12)
    assert not verdict.regressed and not verdict.faster


def test_a_small_but_significant_change_under_the_effect_size_passes():
    verdict = decide(lognormal(16, spread=0.002, seed=4), lognormal(8, scale=1.04, spread=0.002, seed=5))
    assert verdict.p_slower < 1e-4  # significant beyond doubt ...
    assert verdict.change == pytest.approx(0.04, abs=0.005)
    assert not verdict.regressed  # ... but under the 10% effect size


def test_a_large_but_insignificant_change_passes():
    # three rounds a side and a spread of 40%: a 20% median shift is not evidence
    verdict = decide([1.0, 0.6, 1.5], [1.2, 0.7, 1.8])
    assert verdict.change >= 0.10
    assert verdict.p_slower >= 0.01
    assert not verdict.regressed


def test_the_effect_size_and_level_are_parameters():
    ref, new = lognormal(16, spread=0.002, seed=6), lognormal(8, scale=1.04, spread=0.002, seed=7)
    assert decide(ref, new, min_effect=0.03).regressed
    assert not decide(ref, lognormal(8, scale=1.25, seed=8), alpha=1e-9).regressed


def test_a_clear_speedup_is_reported_not_failed():
    verdict = decide(lognormal(16, seed=9), lognormal(8, scale=0.75, seed=10))
    assert verdict.faster and not verdict.regressed


@pytest.mark.parametrize("sample", [[1.0, 2.0], [1.0, 2.0, float("nan")], [1.0, 0.0, 2.0], [1.0, -1.0, 2.0]])
def test_decide_rejects_unusable_samples(sample):
    with pytest.raises(BenchInputError):
        decide(sample, [1.0, 1.0, 1.0])


# --- deterministic figures -------------------------------------------------------------------------

FIGURES = {"params": 1000, "macs_fvcore": 50_000, "cpu_alloc_peak_bytes": 4096}


def test_unchanged_figures_report_nothing():
    assert compare_deterministic({"a": dict(FIGURES)}, {"a": dict(FIGURES)}) == []


def test_any_change_is_reported_and_only_an_increase_fails():
    up = compare_deterministic({"a": FIGURES}, {"a": FIGURES | {"cpu_alloc_peak_bytes": 4097}})
    assert up == [FigureChange("a", "cpu_alloc_peak_bytes", 4096, 4097)] and up[0].increase
    down = compare_deterministic({"a": FIGURES}, {"a": FIGURES | {"params": 999, "macs_fvcore": 40_000}})
    assert {c.figure for c in down} == {"params", "macs_fvcore"}
    assert not any(c.increase for c in down)
    assert "-20.0%" in next(c.text() for c in down if c.figure == "macs_fvcore")


def _side(label, figures, sample):
    side = Side(label, "abc")
    side.deterministic = {"a": figures}
    side.rounds = {"a": [Round(normalised=v, row_ms=10 * v, calibration_ms=10.0) for v in sample]}
    return side


def _config(*rows, **settings):
    """A GateConfig over a suite of `rows` (default: one conv row named "a"), without a history file."""
    rows = rows or (regress.Row("a", "block", 4, kind="conv", dim=320, side=14),)
    return regress.GateConfig(regress.Suite("t", tuple(rows), 1), **{"history": None} | settings)


def test_the_config_defaults_to_the_suite_s_rows_and_the_gate_s_settings():
    config = _config(regress.Row("a", "block", 4, kind="conv", dim=320, side=14),
                     regress.Row("a fast", "block", 4, kind="conv", dim=320, side=14, runtime="fast"))
    assert config.rows == config.suite.rows and len(config.rows) == 2 and config.threads == 1
    assert (config.rounds, config.min_effect, config.alpha) == (regress.DEFAULT_ROUNDS, 0.10, 0.01)
    picked = regress.GateConfig(config.suite, [config.suite.rows[1]])  # --rows: a list, kept as a tuple
    assert picked.rows == (config.suite.rows[1],) and picked.history == regress.HISTORY_PATH


def test_a_figure_increase_fails_the_row_even_when_time_is_unchanged():
    sample = lognormal(8, seed=11)
    config = _config()
    ok = compare(_side("ref", FIGURES, sample), _side("cur", FIGURES, sample), config)
    assert not ok[0].regressed
    more = compare(_side("ref", FIGURES, sample), _side("cur", FIGURES | {"params": 1001}, sample), config)
    assert more[0].regressed and more[0].verdict is not None and not more[0].verdict.regressed
    fewer = compare(_side("ref", FIGURES, sample), _side("cur", FIGURES | {"params": 999}, sample), config)
    assert not fewer[0].regressed and fewer[0].changes


def test_the_table_says_what_regressed_and_by_how_much():
    ref, cur = _side("ref", FIGURES, lognormal(16, seed=12)), _side("cur", FIGURES, lognormal(8, 1.3, seed=13))
    report = regress.Report("baseline", ref, cur, compare(ref, cur, _config()), 0.10, 0.01, "baseline x")
    console = Console(record=True, width=200)
    regress.render(report, console)
    text = console.export_text()
    assert "REGRESSED" in text and "slower" in text and "1 of 1 rows regressed" in text
    assert report.to_json()["regressed"] == ["a"]


# --- baselines ------------------------------------------------------------------------------------


def test_a_missing_baseline_is_a_clear_error(tmp_path):
    with pytest.raises(BenchInputError, match="missing.*make regress-update"):
        regress.load_baseline(tmp_path / "nope.json")


@pytest.mark.parametrize("text", ["{not json", "[]", json.dumps({"schema": "other", "rows": {}}),
                                  json.dumps({"schema": regress.SCHEMA, "method": regress.METHOD,
                                              "rows": {"a": {"params": 1}}}),
                                  json.dumps({"schema": regress.SCHEMA, "method": "older", "rows": {}})])
def test_an_unreadable_baseline_is_a_clear_error(tmp_path, text):
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(BenchInputError, match="baseline"):
        regress.load_baseline(path)


def test_a_baseline_round_trips(tmp_path):
    side = _side("current", FIGURES, lognormal(8, seed=14))
    path = tmp_path / "b.json"
    document = regress.baseline_document(side, _config(rounds=8))
    path.write_text(json.dumps(document, default=str))
    back = regress.baseline_side(regress.load_baseline(path))
    assert back.deterministic == side.deterministic
    assert back.normalised("a") == pytest.approx(side.normalised("a"))


def _main(*argv):
    parser = argparse.ArgumentParser()
    regress.configure_parser(parser)
    return regress.main(parser.parse_args(list(argv)))


def test_the_cli_exits_2_on_a_missing_baseline_without_measuring(tmp_path, capsys):
    assert _main("--baseline", str(tmp_path / "nope.json"), "--no-history") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: baseline") and "missing" in err and "\n" not in err


@pytest.mark.parametrize("argv", [["--rounds", "2"], ["--rows", "nonsense"], ["--alpha", "2"],
                                  ["--min-effect", "0"], ["--update", "--against", "HEAD"],
                                  ["--against", "no-such-revision-xyz"], ["--against", "HEAD", "--rounds", "4"]])
def test_the_cli_exits_2_on_bad_input(argv, capsys):
    assert _main(*argv, "--no-history") == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_fallback_against_takes_the_revision_only_where_this_machine_has_no_baseline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(regress.baselines, "BASELINE_DIR", tmp_path)
    assert _main("--fallback-against", "no-such-revision-xyz", "--no-history") == 2
    err = capsys.readouterr().err
    assert "no baseline for this machine" in err and "error: --against 'no-such-revision-xyz'" in err


def test_rows_are_picked_by_kind_or_name():
    rows = regress.load_suite().rows
    assert [r.name for r in regress.select_rows(rows, ["conv", "container_light"])] == [
        "conv@320x14 b4", "conv@320x14 b4 fast", "container_light b1", "container_light b1 fast"]
    assert [r.name for r in regress.select_rows(rows, ["mix fast", "attn@320x14 b4"])] == [
        "mix@320x14 b4 fast", "attn@320x14 b4"]
    assert len(regress.select_rows(rows, None)) == len(rows) == 11


def test_a_row_the_baseline_lacks_is_reported_new_and_does_not_fail():
    config = _config(regress.Row("a", "block", 4, kind="conv", dim=320, side=14),
                     regress.Row("a fast", "block", 4, kind="conv", dim=320, side=14, runtime="fast"))
    baseline = _side("baseline", FIGURES, lognormal(16, seed=16))
    current = _side("current", FIGURES, lognormal(8, seed=17))
    current.deterministic["a fast"] = dict(FIGURES)
    current.rounds["a fast"] = current.rounds["a"]
    results = compare(baseline, current, config)
    assert not any(r.regressed for r in results)
    assert results[1].verdict is None and results[1].note == "new, not in the baseline (run make regress-update)"
    report = regress.Report("baseline", baseline, current, results, 0.10, 0.01, "baseline x")
    console = Console(record=True, width=200)
    regress.render(report, console)
    assert "new, not in the baseline" in console.export_text() and not report.regressed


# --- history ----------------------------------------------------------------------------------------


def test_history_appends_and_plots(tmp_path):
    path = tmp_path / "history.jsonl"
    for commit, scale in (("c1", 1.0), ("c2", 1.0), ("c3", 1.2)):
        side = _side("current", FIGURES, lognormal(8, scale=scale, seed=15))
        side.commit = commit
        regress.append_history(path, [side], "baseline", threads=1, regressed=["a"] if commit == "c3" else [])
    records = history.read_history(path)
    assert [r["git_commit"] for r in records] == ["c1", "c2", "c3"] and records[2]["regressed"]
    out = history.plot(history.select(records, None), tmp_path / "h.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_history_keeps_suites_apart(tmp_path):
    path = tmp_path / "history.jsonl"
    for suite in ("mine", None):  # None: a record from before suite files, the default suite's
        regress.append_history(path, [_side("current", FIGURES, lognormal(8, seed=15))], "baseline", threads=1,
                               suite=suite)
    records = history.read_history(path)
    assert [r.get("suite") for r in records] == ["mine", None]
    assert len(history.select(records, None, "mine")) == 1 and len(history.select(records, None, "default")) == 1
    with pytest.raises(BenchInputError, match="--suite other: no records; suites in the history: default, mine"):
        history.select(records, None, "other")


def test_history_errors_are_clear(tmp_path):
    with pytest.raises(BenchInputError, match="missing"):
        history.read_history(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{}\n")
    with pytest.raises(BenchInputError, match="bad.jsonl:1"):
        history.read_history(bad)


# --- the worker's interleaving, through the gate's own bench.timing.measure_interleaved --------------


def test_the_worker_alternates_row_and_calibration_calls():
    calls = []
    worker = Worker(REPO_ROOT)
    worker.steps = {"row": lambda: calls.append("r")}
    worker.calibration = lambda: calls.append("c")
    reply = worker.measure({"row": "row", "pairs": 3})
    assert len(reply["row_times_ms"]) == 4 and len(reply["calibration_times_ms"]) == 3
    assert len(reply["normalised"]) == 4
    # each timed call after two untimed calls of the same workload, row and calibration in turn
    assert "".join(calls) == "rrr" + "ccc" + "rrr" + "ccc" + "rrr" + "ccc" + "rrr"


def test_each_row_time_is_normalised_by_the_calibration_times_either_side():
    assert normalise([2.0, 8.0, 3.0], [1.0, 4.0]) == pytest.approx([2.0, 8.0 / 2.0, 3.0 / 4.0])
    assert normalise([2.0], []) == []


def test_the_worker_times_with_the_gate_s_own_timing_module_loaded_by_path():
    assert regress_worker.timing.__file__ == str(REPO_ROOT / "bench" / "timing.py")
    assert regress_worker.timing.measure_interleaved.__module__ == "container_bench_gate_timing"


# A stand-in for another revision's tree: only the public bench API the worker takes from a tree under
# test, no bench/timing.py at all, and bench.profile returning a flat dict (older revisions) or a typed
# result with .row() (newer ones).
STAND_IN_BENCH = textwrap.dedent("""
    from types import SimpleNamespace

    FIGURES = {"params": 7, "macs_fvcore": 11, "cpu_alloc_peak_bytes": 13, "latency_median_ms": 1.0}


    class StopRule:
        def __init__(self, **kwargs):
            pass


    Options = StopRule


    class BlockTarget:
        def __init__(self, kind, dim, side):
            self.dim, self.side = dim, side

        def input_shape(self, batch):
            return (batch, self.dim, self.side, self.side)


    class NetworkTarget:
        pass


    def profile(target, batch, options, flops=True, memory=True):
        return SimpleNamespace(row=lambda: dict(FIGURES)) if TYPED else dict(FIGURES)


    def build_workload(target, batch, options):
        return SimpleNamespace(step=lambda: sum(range(2000)))
""")


@pytest.mark.parametrize("typed", [False, True], ids=["profile-returns-a-dict", "profile-returns-a-result"])
def test_a_worker_process_measures_another_tree_with_the_gate_s_timing(tmp_path, typed):
    for package, text in (("bench", f"TYPED = {typed}\n" + STAND_IN_BENCH), ("container", "")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(text)
    worker = regress.WorkerProcess(tmp_path, "reference", threads=1, inject=False)
    try:
        spec = {"name": "a", "target": "block", "kind": "conv", "dim": 8, "side": 4, "batch": 2}
        setup = worker.request({"cmd": "setup", "rows": [spec], "threads": 1})
        assert setup["errors"] == {}
        assert setup["rows"] == {"a": {"params": 7, "macs_fvcore": 11, "cpu_alloc_peak_bytes": 13}}
        assert setup["files"]["bench"] == str((tmp_path / "bench" / "__init__.py").resolve())
        reply = worker.request({"cmd": "measure", "row": "a", "pairs": 2})
    finally:
        worker.close()
    assert len(reply["row_times_ms"]) == 3 and len(reply["calibration_times_ms"]) == 2
    assert len(reply["normalised"]) == 3 and all(r > 0 for r in reply["normalised"])


def test_a_baseline_from_another_machine_state_is_not_compared(tmp_path, monkeypatch):
    """The drift the calibration cannot cancel: a baseline measured while the calibration ran at 15.3 ms, a run
    at 11.9 ms (the stored default baseline of 2026-12-02 against the CI run that read conv@320x14 b4 fast as
    11-14% slower): the gate measures the fallback revision instead of comparing."""
    config = _config(rounds=8)

    def side_at(label, calibration_ms, seed):
        side = Side(label, "abc")
        side.deterministic = {"a": FIGURES}
        side.rounds = {"a": [Round(normalised=v, row_ms=v * calibration_ms, calibration_ms=calibration_ms)
                             for v in lognormal(8, seed=seed)]}
        return side

    path = tmp_path / "b.json"
    path.write_text(json.dumps(regress.baseline_document(side_at("baseline", 15.3, 18), config), default=str))
    current = side_at("current", 11.9, 19)
    gap = regress.baselines.machine_state_gap(json.loads(path.read_text()), current)
    assert gap == pytest.approx(11.9 / 15.3 - 1)
    against = []
    monkeypatch.setattr(regress.cli, "measure_sides", lambda *a, **k: {"current": current})
    monkeypatch.setattr(regress.cli, "gate_against", lambda *a, **k: against.append(a[2]) or "interleaved")
    monkeypatch.setattr(regress.cli, "revision_tree", lambda rev: contextlib.nullcontext((tmp_path, "abc")))
    assert regress.run_gate(config, baseline=path, fallback_against="HEAD~1") == "interleaved"
    assert against == ["HEAD~1"]
    current = side_at("current", 15.0, 19)  # the machine in the baseline's state: compared with it, as before
    assert regress.run_gate(config, baseline=path, fallback_against="HEAD~1").mode == "baseline"
    assert against == ["HEAD~1"]
