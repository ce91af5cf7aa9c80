"""`python -m bench repeat` (bench.repeat): the agreement arithmetic on constructed runs, the files it writes,
one real end-to-end call with tiny stop rules, and bad input."""
from __future__ import annotations

import functools
import json

import pandas as pd
import pytest

import bench
import bench.cli
import bench.suite
from bench.repeat import AGREE_WITHIN, run_agreement, spread, write_repeat

TINY_STOP = bench.StopRule(rel_iqr=1.0, min_runs=3, min_time_s=0.0, max_time_s=0.2)


def _run(norm: dict[tuple[str, str], float], drift: float = 1.0, kernel: float = 0.95) -> pd.DataFrame:
    """One run's results rows, one per (name, runtime): its normalised median as given, measured `drift` times
    it (the machine ran that much slower than its reference)."""
    return pd.DataFrame([{"name": name, "batch_size": 1, "device": "cpu", "dtype": "fp32", "channels_last": False,
                          "compile": False, "mode": "inference", "runtime": runtime, "status": "ok",
                          "latency_median_ms": ms * drift, "latency_norm_ms": ms, "machine_speed": 1 / drift,
                          "fraction_of_kernel_bound": kernel}
                         for (name, runtime), ms in norm.items()])


def test_spread_is_max_over_min_minus_one_and_missing_without_every_run():
    values = pd.DataFrame({"1": [1.0, 2.0, None], "2": [1.08, 1.0, 3.0], "3": [1.04, 2.0, 3.0]})
    assert spread(values).round(6).tolist()[:2] == [0.08, 1.0]
    assert pd.isna(spread(values).iloc[2])


def test_a_row_off_by_8_percent_is_flagged_and_the_others_agree():
    first = {("a", "reference"): 1.0, ("b", "reference"): 2.0, ("c", "reference"): 3.0, ("d", "reference"): 4.0}
    second = first | {("c", "reference"): 3.0 * 1.08}
    # the machine ran 20% slower in the second run: every measured figure is off, the normalised ones are not
    result = run_agreement([_run(first), _run(second, drift=1.2)])
    rows = result.rows.set_index("name")
    within = f"within {AGREE_WITHIN:.0%}"
    assert rows["norm spread (%)"].tolist() == pytest.approx([0.0, 0.0, 8.0, 0.0])
    assert rows[f"norm {within}"].tolist() == [True, True, False, True]
    assert rows.loc["c", "norm 2 (ms)"] == pytest.approx(3.24)
    s = result.summary
    assert s.norm_agree_fraction == pytest.approx(1 - 1 / 4) and s.norm_compared == 4
    assert s.norm_max_spread_pct == pytest.approx(8.0) and s.norm_worst_row.startswith("c b1")
    assert s.measured_agree_fraction == 0.0 and s.measured_max_spread_pct == pytest.approx(29.6)
    assert s.machine_speed == pytest.approx((1.0, 1 / 1.2))
    assert s.workloads == 0 and s.verdict_flips == 0  # no fast against a deployed runtime
    assert "3 of 4 rows (75%) agree within 5%" in " ".join(result.sentences())


def test_a_verdict_flip_when_fast_over_best_crosses_one():
    first = {("a", "fast"): 0.9, ("a", "onnxruntime"): 1.0, ("b", "fast"): 2.0, ("b", "onnxruntime"): 4.0}
    second = first | {("a", "fast"): 1.1}
    result = run_agreement([_run(first), _run(second)])
    goal = result.goal.set_index("name")
    assert goal["goal 1"].tolist() == ["met", "met"] and goal["goal 2"].tolist() == ["slower than best", "met"]
    assert goal["verdict flipped"].tolist() == [True, False]
    assert goal.loc["a", "fast / best spread (%)"] == pytest.approx(100 * (1.1 / 0.9 - 1), abs=0.01)
    s = result.summary
    assert s.workloads == 2 and s.verdict_flips == 1 and s.flipped == ("a b1 fp32",)
    assert s.max_fast_best_spread_pct == pytest.approx(22.22, abs=0.01)
    assert "verdict flip" in result.summary_line()


def test_a_row_without_a_figure_in_a_run_is_shown_and_left_out_of_the_fractions():
    runs = [_run({("a", "reference"): 1.0, ("b", "reference"): 2.0}) for _ in range(3)]
    runs[1].loc[runs[1]["name"] == "b", "status"] = "mismatch"
    runs[2] = runs[2][runs[2]["name"] == "a"]  # b did not run at all the third time
    result = run_agreement(runs)
    rows = result.rows.set_index("name")
    assert result.summary.rows == 2 and result.summary.norm_compared == 1
    assert result.summary.norm_agree_fraction == 1.0
    assert pd.isna(rows.loc["b", "norm spread (%)"]) and rows.loc["b", "status"] == "ok / mismatch / not run"
    assert "1 row without a figure in every run left out" in " ".join(result.sentences())


def test_write_repeat_writes_the_table_json_and_report(tmp_path):
    frames = [_run({("a", "fast"): 1.0, ("a", "openvino"): 1.2}).assign(cpu_model="Test CPU", cpu_cores_logical=2)
              for _ in range(2)]
    result = run_agreement(frames)
    report = write_repeat(result, tmp_path, command="python -m bench repeat --times 2", pause_s=0.0, frames=frames)
    assert len(pd.read_csv(tmp_path / "repeat.csv")) == 2
    doc = json.loads((tmp_path / "repeat.json").read_text())  # strict JSON: NaN written as null
    assert doc["summary"]["runs"] == 2 and len(doc["rows"]) == 2 and len(doc["fast_against_best"]) == 1
    text = report.read_text()
    assert "Test CPU" in text and "`python -m bench repeat --times 2`" in text and "## fast / best" in text


def test_repeat_command_end_to_end(tmp_path, monkeypatch):
    # nothing goes into the checkout's results/ (tests/conftest.py makes the machine reference short and temporary)
    monkeypatch.setenv("CONTAINER_BENCH_RESULTS", str(tmp_path / "results"))
    monkeypatch.setattr(bench.suite, "QUICK_STOP", TINY_STOP)
    monkeypatch.setattr(bench.cli, "QUICK_STOP", TINY_STOP)
    monkeypatch.setattr(bench.suite, "calibrate", functools.cache(bench.suite.calibrate))  # one roofline, not two
    out = tmp_path / "repeat"
    assert bench.cli.main(["repeat", "--times", "2", "--pause-s", "0", "--quick", "--kinds", "conv",
                           "--no-progress", "--out", str(out)]) == 0
    measured = pd.read_csv(out / "run-1" / "results.csv")
    assert len(measured) == len(pd.read_csv(out / "run-2" / "results.csv")) == 1  # conv@512x7 on the reference
    table = pd.read_csv(out / "repeat.csv")
    assert sorted(table["runtime"]) == sorted(measured["runtime"]) and len(table) == len(measured)
    assert json.loads((out / "repeat.json").read_text())["summary"]["runs"] == 2
    assert "--times 2" in (out / "report.md").read_text()


def test_repeat_takes_the_run_options_and_its_own():
    dests = {a.dest for a in bench.cli.build_parser("repeat")._actions}
    assert {a.dest for a in bench.cli.build_parser("run")._actions} | {"times", "pause_s"} == dests


@pytest.mark.parametrize("argv,flag", [(["--times", "1"], "--times"), (["--pause-s", "-1"], "--pause-s"),
                                       (["--pause-s", "nan"], "--pause-s")])
def test_bad_input_is_one_line_naming_the_flag_and_exit_2(argv, flag, capsys):
    assert bench.cli.main(["repeat", *argv, "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0]
