"""The runtime table (bench/report.py runtime_comparison) and the job set behind `make bench-runtimes`.

The report is tested on made-up frames: ratios to the reference and to the fastest runtime, a row that
gave no latency shown with its status and no figure, the geometric means, and the bounds of a plain
`--runtime reference,fast` run in two dtypes (make bench-fast).
"""
from __future__ import annotations

import math

import pandas as pd
import pytest
from rich.console import Console

import bench
from bench.report import print_summary, runtime_comparison, write_report
from bench.runtimes import RUNTIMES
from bench.suite import runtime_jobs, suite_jobs

REASON = "max rel error 0.31 > 1e-4"


def row(name, runtime, ms, *, dtype="fp32", target="block", batch=1, status="ok", reason="", convert_s=math.nan,
        error=0.0, **extra):
    return {"target": target, "name": name, "batch_size": batch, "device": "cpu", "channels_last": False,
            "compile": False, "mode": "inference", "dtype": dtype, "runtime": runtime, "status": status,
            "status_reason": reason, "latency_median_ms": ms if status == "ok" else math.nan,
            "convert_s": convert_s, "max_rel_error": error, "fraction_of_peak": 0.5} | extra


@pytest.fixture
def frame() -> pd.DataFrame:
    """Two blocks and a network on the four runtimes; openvino computes something else on block b."""
    return pd.DataFrame([
        row("a", "reference", 8.0), row("a", "fast", 4.0), row("a", "onnxruntime", 2.0, convert_s=1.5, error=3e-7),
        row("a", "openvino", 5.0, convert_s=0.8, error=2e-7),
        row("b", "reference", 6.0), row("b", "fast", 3.0), row("b", "onnxruntime", 2.0, convert_s=1.2),
        row("b", "openvino", None, status="mismatch", reason=REASON, convert_s=0.7, error=0.31),
        row("net", "reference", 100.0, target="network"), row("net", "fast", 80.0, target="network"),
        row("net", "onnxruntime", None, target="network", status="export_failed",
            reason="UnsupportedOperatorError: aten::foo"),
        row("net", "openvino", 50.0, target="network", convert_s=9.0),
    ])


def test_each_runtime_is_divided_by_the_reference_and_by_the_fastest(frame):
    table = runtime_comparison(frame).set_index(["name", "runtime"])
    assert table.loc[("a", "reference"), "speedup"] == 1.0
    assert table.loc[("a", "fast"), "speedup"] == 2.0 and table.loc[("a", "onnxruntime"), "speedup"] == 4.0
    assert table.loc[("a", "onnxruntime"), "time / fastest"] == 1.0  # the fastest on a
    assert table.loc[("a", "reference"), "time / fastest"] == 4.0
    assert table.loc[("a", "openvino"), "time / fastest"] == 2.5
    assert table.loc[("net", "openvino"), "time / fastest"] == 1.0 and table.loc[("net", "reference"), "speedup"] == 1.0
    assert table.loc[("a", "onnxruntime"), "convert (s)"] == 1.5
    assert math.isnan(table.loc[("a", "fast"), "convert (s)"])  # a torch runtime without compile converts nothing
    assert table.loc[("a", "onnxruntime"), "max rel error"] == pytest.approx(3e-7)  # not rounded away
    assert "vs ref fp32" not in table  # fp32 only: it would repeat the speedup


def test_a_row_without_a_latency_keeps_its_line_with_its_reason_and_no_figure(frame):
    table = runtime_comparison(frame).set_index(["name", "runtime"])
    mismatch = table.loc[("b", "openvino")]
    assert mismatch["status"] == f"mismatch: {REASON}" and mismatch["max rel error"] == 0.31
    assert all(math.isnan(mismatch[c]) for c in ("median (ms)", "speedup", "time / fastest"))
    assert table.loc[("b", "onnxruntime"), "time / fastest"] == 1.0  # the fastest of those that gave a figure
    failed = table.loc[("net", "onnxruntime")]
    assert failed["status"].startswith("export_failed: UnsupportedOperatorError") and math.isnan(failed["speedup"])
    assert table.loc[("a", "fast"), "status"] == "ok"


def test_geometric_means_per_runtime_over_the_workloads_with_a_figure(frame):
    table = runtime_comparison(frame)
    means = table[table["name"].str.startswith("geometric mean")].set_index("runtime")
    ran = [r for r in RUNTIMES if r in set(frame["runtime"])]  # in the order of bench.runtimes.RUNTIMES
    assert list(means.index) == ran  # one per runtime, blocks only: a single network has none
    assert means.loc["fast", "name"] == "geometric mean of 2 blocks"
    assert means.loc["fast", "speedup"] == pytest.approx(2.0)
    assert means.loc["onnxruntime", "speedup"] == pytest.approx(math.sqrt(4.0 * 3.0), abs=1e-3)
    assert means.loc["openvino", "name"] == "geometric mean of 1 block (1 without a figure)"
    assert means.loc["openvino", "speedup"] == pytest.approx(1.6)
    # the rows of a workload stay together, in the order of bench.runtimes.RUNTIMES, whatever the frame's order
    shuffled = runtime_comparison(frame.iloc[::-1])
    assert list(shuffled["runtime"][:4]) == ran


def test_one_runtime_alone_has_no_comparison(frame):
    assert runtime_comparison(frame[frame["runtime"] == "fast"]).empty


def test_a_reference_and_fast_run_in_two_dtypes_keeps_the_fp32_baseline_and_the_bounds():
    """make bench-fast: reference,fast in fp32 and bf16."""
    def timed(name, dtype, runtime, ms, gemm_ms, kernel_ms):
        return row(name, runtime, ms, dtype=dtype, gemm_bound_ms=gemm_ms, kernel_bound_ms=kernel_ms,
                   fraction_of_kernel_bound=kernel_ms / ms)

    frame = pd.DataFrame([timed("a", "fp32", "reference", 12.0, 2.0, 2.0),
                          timed("b", "fp32", "reference", 6.0, 1.0, 1.0), timed("a", "fp32", "fast", 6.0, 2.0, 4.0),
                          timed("b", "fp32", "fast", 3.0, 1.0, 1.5), timed("a", "bf16", "fast", 4.0, 1.0, 3.0)])
    table = runtime_comparison(frame).set_index(["dtype", "name", "runtime"])
    assert table.loc[("fp32", "a", "fast"), "speedup"] == 2.0
    assert table.loc[("fp32", "a", "fast"), "GEMM-roof bound"] == 6.0
    assert table.loc[("fp32", "a", "fast"), "kernel bound"] == 3.0
    assert table.loc[("fp32", "a", "fast"), "% of kernel bound"] == pytest.approx(100 * 4.0 / 6.0, abs=1e-3)
    mean = table.loc[("fp32", "geometric mean of 2 blocks", "fast")]
    assert mean["speedup"] == pytest.approx(2.0) and mean["kernel bound"] == pytest.approx(12 ** 0.5, abs=1e-3)
    # a bf16 row without a bf16 reference is still judged against the reference's fp32 latency
    bf16 = table.loc[("bf16", "a", "fast")]
    assert bf16["vs ref fp32"] == 3.0 and bf16["kernel bound"] == 4.0 and math.isnan(bf16["speedup"])
    assert bf16["time / fastest"] == 1.0


def test_report_and_terminal_show_the_runtime_table(frame, tmp_path):
    report = write_report(frame, tmp_path, []).read_text()
    assert "## Runtimes on the same workloads" in report
    line = next(x for x in report.splitlines() if REASON in x and x.startswith("| b "))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:2] == ["b", "1"] and "openvino" in cells and "-" in cells and "nan" not in line
    console = Console(record=True, width=250)
    print_summary(frame, console)
    text = console.export_text()
    assert "runtimes on the same workloads" in text and f"mismatch: {REASON}" in text
    assert "time / fastest" in text and "RSS" not in text  # no RSS measured: no empty column


# --- the job set of make bench-runtimes ---------------------------------------------------------------------


def test_the_runtimes_suite_measures_every_runtime_on_the_same_workloads_back_to_back():
    options = [bench.Options(runtime=runtime) for runtime in RUNTIMES]
    jobs = runtime_jobs(options)
    workloads = list(dict.fromkeys((j.target.name, j.batch_size) for j in jobs))
    assert [(j.target.name, j.batch_size, j.options.runtime) for j in jobs] == [
        (*w, runtime) for w in workloads for runtime in RUNTIMES]
    networks = [w for w in workloads if "@" not in w[0]]
    assert networks == [("container_light", 1), ("container_light", 8), ("container", 1), ("container", 8)]
    blocks = [w for w in workloads if "@" in w[0]]
    assert len([w for w in blocks if w[1] == 1]) == 7 * 4  # every kind at the four stage shapes, batch 1
    assert [w for w in blocks if w[1] != 1] == [("mix@64x56", 8), ("mix@128x28", 16), ("mix@320x14", 32),
                                                ("mix@512x7", 64)]
    assert all(j.options.dtype == "fp32" and j.options.threads is None for j in jobs)


def test_the_runtimes_suite_quick_and_its_bad_input():
    jobs = suite_jobs("runtimes", [bench.Options(runtime="fast")], kinds=["conv"], quick=True)
    assert [(j.target.name, j.batch_size) for j in jobs] == [("conv@512x7", 1), ("container_light", 1)]
    with pytest.raises(bench.BenchInputError, match="--batch-sizes"):
        suite_jobs("runtimes", [bench.Options()], batch_sizes=[4])
