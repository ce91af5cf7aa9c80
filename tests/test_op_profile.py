"""bench.ops.profile and `python -m bench ops`: op-by-op profiles per runtime, on tiny shapes (no timing asserted)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

import bench.cli
from bench.ops.profile import (ATTENTION, CATEGORIES, COLUMNS, DEPTHWISE, GEMM, OpProfile, _onnxruntime_trace_times,
                               categorize, compare, native_gaps, profile_ops)
from bench.options import Options
from bench.targets import BlockTarget
from container.fast import precision as fast_precision

TINY = BlockTarget("mix", 32, 7)
RUNS = 3


def profiled(runtime: str) -> OpProfile:
    return profile_ops(TINY, 1, Options(runtime=runtime, threads=1), runs=RUNS)


def check_rows(p: OpProfile) -> None:
    assert not p.rows.empty
    assert list(p.rows.columns) == COLUMNS
    assert p.rows["ms_per_run"].sum() == pytest.approx(p.total_ms)
    assert p.rows["share"].sum() == pytest.approx(1.0)
    assert set(p.rows["category"]) <= set(CATEGORIES)
    assert (p.target, p.batch, p.runs, p.threads) == (TINY.name, 1, RUNS, 1)


# --- the mapping itself ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("op,runtime,shapes,category", [
    ("mkldnn::_linear_pointwise", "fast", [[49, 32], [96, 32], [96]], GEMM),
    ("aten::addmm", "reference", [[10], [1, 64], [64, 10]], GEMM),
    ("mkldnn::_convolution_pointwise", "fast", [[1, 32, 7, 7], [32, 1, 3, 3], [32]], DEPTHWISE),
    ("mkldnn::_convolution_pointwise", "fast", [[1, 32, 32, 32], [96, 32, 1, 1], [96]], GEMM),
    # in-place binary: output first, weight third
    ("mkldnn::_convolution_pointwise_", "fast", [[1, 32, 32, 32], [1, 128, 32, 32], [32, 128, 1, 1], [32]], GEMM),
    ("aten::mkldnn_convolution", "reference", [[1, 32, 7, 7], [32, 1, 5, 5], [32]], DEPTHWISE),
    ("aten::_slow_conv2d_forward", "reference", [[1, 32, 7, 7], [96, 32, 1, 1], [], [96]], GEMM),
    ("aten::mkldnn_convolution", "reference", [[1, 3, 32, 32], [16, 3, 4, 4], [16]], "patch embedding conv"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "fast", [[1, 1, 49, 32]] * 3, ATTENTION),
    ("aten::softmax", "reference", [[1, 1, 49, 49]], ATTENTION),
    ("aten::bmm", "reference", [[1, 49, 32], [1, 32, 49]], ATTENTION),
    ("aten::matmul", "reference", [[1, 49, 32], [32, 64]], GEMM),
    ("aten::native_batch_norm", "reference", [], "norm"),
    ("aten::gelu_", "fast", [], "activation"),
    ("aten::add_", "fast", [], "elementwise add/mul"),
    ("aten::copy_", "fast", [], "layout / copy / reorder"),
    ("aten::mean", "reference", [], "pooling / head"),
    ("aten::something_new", "fast", [], "other"),
    ("GroupConvolution", "openvino", [[1, 32, 7, 7], [32, 1, 1, 3, 3], [32]], DEPTHWISE),
    ("Convolution", "openvino", [[1, 32, 7, 7], [96, 32, 1, 1], [96], [1, 96, 7, 7]], GEMM),
    ("Convolution", "openvino", [[1, 3, 224, 224], [64, 3, 4, 4], [64]], "patch embedding conv"),
    ("FullyConnected", "openvino", [], GEMM),
    ("MatMul", "openvino", [[1, 1, 32, 49], [1, 1, 32, 49]], ATTENTION),
    ("Softmax", "openvino", [], ATTENTION),
    ("MVN", "openvino", [], "norm"),
    ("Reorder", "openvino", [], "layout / copy / reorder"),
    ("Eltwise", "openvino", [], "elementwise add/mul"),
    ("Conv", "onnxruntime", [[1, 32, 7, 7], [32, 1, 3, 3], [32]], DEPTHWISE),
    ("Conv", "onnxruntime", [[1, 32, 7, 7], [96, 32, 1, 1], [96]], GEMM),
    ("FusedMatMul", "onnxruntime", [[1, 1, 32, 49], [1, 1, 32, 49]], ATTENTION),
    ("MatMul", "onnxruntime", [[1, 49, 32], [32, 96]], GEMM),
    ("Gemm", "onnxruntime", [], GEMM),
    ("LayerNormalization", "onnxruntime", [], "norm"),
    ("ReorderInput", "onnxruntime", [], "layout / copy / reorder"),
    ("GlobalAveragePool", "onnxruntime", [], "pooling / head"),
    ("Conv", "onnxruntime", [], GEMM),  # no shapes: a plain conv
    ("NoSuchOp", "onnxruntime", [], "other"),
])
def test_categorize_maps_each_profilers_names(op, runtime, shapes, category):
    assert categorize(op, runtime, shapes) == category


def test_onnxruntime_trace_keeps_the_last_runs_and_takes_each_nodes_median():
    def node(name, ts, dur, op="Conv"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "input_type_shape": [{"float": [1, 32, 7, 7]}, {"float": [96, 32, 1, 1]}]}}
    runs = [(0, 100), (200, 100), (400, 100), (600, 100)]  # the first is the warm-up
    trace = [{"cat": "Session", "name": "model_run", "ts": ts, "dur": dur} for ts, dur in runs]
    trace += [node("conv", ts + 10, dur) for (ts, _), dur in zip(runs, (9000, 10, 30, 20))]
    trace += [node("split", ts + 50, 5, op="Split") for ts, _ in runs]
    times = {t.node: t for t in _onnxruntime_trace_times(trace, runs=3)}
    assert times["conv"].ms_per_run == pytest.approx(0.020)  # median of 10, 30, 20 us; the warm-up's 9 ms left out
    assert times["conv"].calls_per_run == 1 and times["conv"].shapes == ((1, 32, 7, 7), (96, 32, 1, 1))
    assert times["split"].op == "Split"


def fake(runtime, ms):
    """A profile of runtime `runtime` on target "t" spending `ms[category]` in one op per category."""
    rows = pd.DataFrame({"runtime": runtime, "target": "t", "batch": 1, "op": list(ms), "category": list(ms),
                         "shape": "", "calls_per_run": 1.0, "ms_per_run": list(ms.values()), "share": 0.0,
                         "node": ""})
    return OpProfile("t", runtime, 1, 1, 3, sum(ms.values()), 0.0, rows)


def test_compare_is_ms_by_category_with_a_total_and_where_fast_loses():
    table = compare([fake("fast", {GEMM: 2.0, ATTENTION: 1.0}), fake("openvino", {GEMM: 1.5, "norm": 0.5})])
    assert list(table["category"]) == [GEMM, ATTENTION, "norm", "total"]
    gemm = table.set_index("category").loc[GEMM]
    assert (gemm["fast"], gemm["openvino"], gemm["best"]) == (2.0, 1.5, "openvino")
    assert gemm["fast_minus_best_ms"] == pytest.approx(0.5)
    total = table.set_index("category").loc["total"]
    assert (total["fast"], total["openvino"]) == (3.0, 2.0)
    assert table.set_index("category").loc["norm", "fast"] == 0.0


def test_native_gaps_name_the_categories_where_the_faster_torch_runtime_loses_to_the_faster_deployed_one():
    profiles = [fake("fast", {GEMM: 2.0, ATTENTION: 1.0, "norm": 0.1}), fake("aot", {GEMM: 2.5, ATTENTION: 1.0}),
                fake("onnxruntime", {GEMM: 1.5, ATTENTION: 0.7, "norm": 0.3}),
                fake("openvino", {GEMM: 1.4, "norm": 2.0}), fake("reference", {GEMM: 9.0})]
    gaps = native_gaps(profiles)
    assert len(gaps) == 1
    row = gaps.iloc[0]
    # fast (3.1 ms) is the faster torch-native runtime, onnxruntime (2.5) the faster deployed one (openvino 3.4).
    assert (row["native"], row["best"]) == ("fast", "onnxruntime")
    assert (row["native_ms"], row["best_ms"], row["gap_ms"]) == pytest.approx((3.1, 2.5, 0.6))
    assert row["where"] == f"{GEMM} +0.500 ms, {ATTENTION} +0.300 ms"  # largest first; norm, where fast wins, left out
    assert native_gaps([profiles[0], profiles[4]]).empty  # no deployed runtime: nothing to compare


# --- real profiles, tiny shapes ----------------------------------------------------------------------------------

def test_fast_profile_names_the_fast_paths_ops():
    p = profiled("fast")
    check_rows(p)
    ops = set(p.rows["op"])
    assert ops & {"mkldnn::_linear_pointwise", "aten::addmm", "mkldnn::_convolution_pointwise"}, ops
    assert ATTENTION in set(p.rows["category"])
    assert any("scaled_dot_product" in op for op in ops), ops
    depthwise = p.rows[p.rows["category"] == DEPTHWISE]
    assert not depthwise.empty and all("32x1x" in s for s in depthwise["shape"])
    assert GEMM in set(p.rows["category"])


def test_reference_profile_names_the_seeds_attention():
    p = profiled("reference")
    check_rows(p)
    ops = set(p.rows["op"])
    assert ops & {"aten::softmax", "aten::_softmax", "aten::bmm"}, ops
    assert {GEMM, DEPTHWISE, ATTENTION} <= set(p.rows["category"])


@pytest.mark.slow
def test_openvino_profile_has_its_nodes():
    pytest.importorskip("openvino")
    p = profiled("openvino")
    check_rows(p)
    assert (p.rows["node"] != "").all()
    assert {GEMM, DEPTHWISE} <= set(p.rows["category"])


@pytest.mark.slow
def test_onnxruntime_profile_has_its_nodes():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    p = profiled("onnxruntime")
    check_rows(p)
    assert (p.rows["node"] != "").all()
    assert {GEMM, DEPTHWISE} <= set(p.rows["category"])


# --- the command ----------------------------------------------------------------------------------------------

@pytest.fixture
def tiny_network(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({"stages": [{"depth": 1, "dim": 16, "heads": 1, "kind": "mix", "patch_size": 4}],
                                "image_size": 16, "num_classes": 10}))
    return path


def test_ops_command_writes_its_four_files(tiny_network, tmp_path, capsys):
    out = tmp_path / "ops"
    argv = ["ops", "--networks", str(tiny_network), "--runtime", "reference,fast", "--runs", "2", "--threads", "1",
            "--top", "5", "--out", str(out), "--no-progress"]
    assert bench.cli.main(argv) == 0
    assert {p.name for p in out.iterdir()} >= {"ops.csv", "categories.csv", "gaps.csv", "report.md", "ops.png"}
    rows = pd.read_csv(out / "ops.csv")
    assert list(rows.columns) == COLUMNS and set(rows["runtime"]) == {"reference", "fast"}
    categories = pd.read_csv(out / "categories.csv")
    assert {"reference", "fast", "best", "fast_minus_best_ms"} <= set(categories.columns)
    assert "total" in set(categories["category"]) and "patch embedding conv" in set(categories["category"])
    report = (out / "report.md").read_text()
    assert f"## {tiny_network}, batch 1" in report and "### Top 5 ops: fast" in report and "Machine:" in report


@pytest.mark.skipif(not fast_precision.native_low_precision(torch.device("cpu"), torch.bfloat16),
                    reason="this CPU has no native bf16")
def test_ops_profiles_bf16_autocast(tiny_network, tmp_path):
    casts = {}
    for dtype in ("fp32", "bf16"):
        out = tmp_path / dtype
        argv = ["ops", "--networks", str(tiny_network), "--runtime", "fast", "--dtype", dtype, "--runs", "2",
                "--threads", "1", "--out", str(out), "--no-progress"]
        assert bench.cli.main(argv) == 0
        rows = pd.read_csv(out / "ops.csv")
        casts[dtype] = rows.loc[rows["op"] == "aten::_to_copy", "calls_per_run"].sum()
        assert f"; {dtype};" in (out / "report.md").read_text()
    assert casts["bf16"] > casts["fp32"], casts  # the casts to bf16 before the GEMMs: autocast reached the call


@pytest.mark.parametrize("argv,flag", [
    (["--runtime", "tensorrt"], "--runtime"),
    (["--runs", "0"], "--runs"),
    (["--top", "0"], "--top"),
    (["--kinds", "transformer"], "--kinds"),
    (["--networks", "resnet50"], "--networks"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--dtype", "int8"], "--dtype"),
    (["--dtype", "bf16", "--runtime", "onnxruntime"], "--dtype"),
])
def test_ops_rejects_bad_input_in_one_line_naming_the_flag(argv, flag, tmp_path, capsys):
    try:
        code = bench.cli.main(["ops", *argv, "--out", str(tmp_path)])
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and "Traceback" not in err[0]


def test_help_lists_the_ops_command():
    assert "ops" in bench.cli.build_parser().format_help()
