"""The fast-against-best goal table (bench.fast_goal) on constructed runs, and `--before` on the command line."""
from __future__ import annotations

import pandas as pd
import pytest

from bench.cli import main
from bench.fast_goal import earlier_run, fast_against_best, goal_summary
from bench.targets import BenchInputError


def _rows(times: dict[tuple[str, str], float], kernel: float = 0.95) -> pd.DataFrame:
    """One results row per (workload, runtime) with its median; every row at `kernel` of its kernel bound."""
    return pd.DataFrame([{"name": name, "batch_size": 1, "device": "cpu", "dtype": "fp32", "channels_last": False,
                          "compile": False, "mode": "inference", "runtime": runtime, "status": "ok",
                          "latency_median_ms": ms, "fraction_of_kernel_bound": kernel}
                         for (name, runtime), ms in times.items()])


def test_each_workload_against_the_fastest_deployed_runtime():
    run = _rows({("a", "reference"): 1.0, ("a", "fast"): 2.0, ("a", "onnxruntime"): 3.0, ("a", "openvino"): 2.5,
                 ("b", "reference"): 0.5, ("b", "fast"): 4.0, ("b", "onnxruntime"): 2.0, ("b", "openvino"): 5.0})
    table = fast_against_best(run).set_index("name")
    # the reference is not a deployed runtime: a is measured against openvino (2.5), not the reference (1.0)
    assert table.loc["a", "best runtime"] == "openvino" and table.loc["a", "fast / best"] == pytest.approx(0.8)
    assert table.loc["b", "best runtime"] == "onnxruntime" and table.loc["b", "fast / best"] == pytest.approx(2.0)
    assert table.loc["a", "goal"] == "met" and table.loc["b", "goal"] == "slower than best"
    assert goal_summary(table.reset_index()).startswith("1 of 2 workloads meet the goal")


def test_under_the_kernel_fraction_misses_the_goal_even_when_faster():
    table = fast_against_best(_rows({("a", "fast"): 1.0, ("a", "openvino"): 2.0}, kernel=0.5))
    assert table["goal"].tolist() == ["under 90% of bound"] and table["% of kernel bound"].tolist() == [50.0]


def test_a_failed_runtime_row_is_not_the_best_and_before_ratios_sit_beside():
    run = _rows({("a", "fast"): 2.0, ("a", "onnxruntime"): 1.0, ("a", "openvino"): 3.0})
    run.loc[run["runtime"] == "onnxruntime", "status"] = "mismatch"
    before = _rows({("a", "fast"): 6.0, ("a", "openvino"): 3.0})
    table = fast_against_best(run, before)
    assert table["best runtime"].tolist() == ["openvino"]
    assert table["fast / best before"].tolist() == [2.0]
    assert table["fast / best"].iloc[0] == pytest.approx(2 / 3, abs=1e-3)
    assert "(before: 2.00)" in goal_summary(table)


def test_no_table_without_fast_and_a_deployed_runtime():
    assert fast_against_best(_rows({("a", "reference"): 1.0, ("a", "fast"): 2.0})).empty
    assert fast_against_best(_rows({("a", "openvino"): 1.0})).empty


def test_earlier_run_reads_a_directory_or_its_csv_and_refuses_others(tmp_path):
    run = _rows({("a", "fast"): 2.0, ("a", "openvino"): 1.0})
    run.to_csv(tmp_path / "results.csv", index=False)
    assert len(earlier_run(str(tmp_path))) == len(earlier_run(str(tmp_path / "results.csv"))) == 2
    with pytest.raises(BenchInputError, match="no readable results.csv"):
        earlier_run(str(tmp_path / "nothing"))
    pd.DataFrame({"x": [1]}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(BenchInputError, match="not a bench run's results"):
        earlier_run(str(tmp_path / "other.csv"))


def test_before_flag_bad_input_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--before", str(tmp_path / "missing"), "--kinds", "mix", "--quick"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--before" in err


def test_report_section_has_the_goal_table_with_before():
    from bench.report import goal_section
    run = _rows({("a", "reference"): 3.0, ("a", "fast"): 2.0, ("a", "openvino"): 2.5})
    text = "\n".join(goal_section(run, _rows({("a", "fast"): 5.0, ("a", "openvino"): 2.5})))
    assert "## container.optimize against the best runtime" in text and "fast / best before" in text
    assert "1 of 1 workloads meet the goal" in text and "(before: 2.00)" in text
    assert goal_section(_rows({("a", "reference"): 3.0})) == []


def test_torch_native_is_the_faster_of_fast_and_aot_against_the_same_best():
    times = {("a", "fast"): 2.0, ("a", "aot"): 1.5, ("a", "openvino"): 2.5, ("b", "fast"): 4.0, ("b", "aot"): 5.0,
             ("b", "onnxruntime"): 2.0}
    run = _rows(times)
    run["latency_rounds_norm_ms"] = [[ms * f for f in (1.0, 1.02, 0.98, 1.01, 0.99)] for ms in times.values()]
    table = fast_against_best(run).set_index("name")
    # aot is not a deployed runtime: a's best is still openvino, and the goal stays fast's own
    assert table.loc["a", "best runtime"] == "openvino" and table.loc["a", "fast / best"] == pytest.approx(0.8)
    assert table.loc["a", "torch-native"] == "aot" and table.loc["a", "torch-native / best"] == pytest.approx(0.6)
    assert table.loc["b", "torch-native"] == "fast" and table.loc["b", "torch-native / best"] == pytest.approx(2.0)
    low, high = map(float, table.loc["a", "torch-native / best 95% CI"].split("-"))
    assert low <= 0.6 <= high
    columns = list(table.columns)
    assert columns.index("torch-native / best") == columns.index("fast / best 95% CI") + 2
    assert "torch-native (the faster of fast and aot) / best" in goal_summary(table.reset_index())
    assert "torch-native / best" not in fast_against_best(run[run["runtime"] != "aot"])
