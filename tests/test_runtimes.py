"""bench.runtimes: every runtime converted once, checked against the reference module, timed by the one
timing path; a runtime that computes something else or does not convert gets a status, not a figure.

Tiny blocks and small inputs: the figures asserted are statuses, errors and presence, never times.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import sys

import pytest
import torch
import torch.nn as nn

import bench
import bench.workload
from bench import BenchInputError, BlockTarget, ModuleTarget, Options, StopRule
from bench.runtimes import (RUNTIMES, TORCH_RUNTIMES, ExportFailed, check_runtime, max_rel_error, one_line,
                            tolerance)

QUICK = StopRule(rel_iqr=1.0, min_runs=2, min_time_s=0.0, max_time_s=0.05)
CONVERTERS = ("onnxruntime", "openvino")
PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def needs(runtime: str) -> None:
    if runtime in PACKAGE:
        pytest.importorskip(PACKAGE[runtime])
    if runtime == "onnxruntime":
        pytest.importorskip("onnxscript")


def quick(runtime: str, **changes) -> Options:
    return Options(runtime=runtime, threads=1, stop=QUICK, **changes)


class Bessel(nn.Module):
    """An op that neither exporter has (torch.onnx: no ONNX function; OpenVINO: no conversion rule)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(x)


@pytest.mark.parametrize("kind", ["mix", "conv"])
# aot compiles two packages per block (~10 s each): tests/test_aot.py checks it, on blocks it shares the cache of
@pytest.mark.parametrize("runtime", [r for r in RUNTIMES if r != "aot"])
def test_every_runtime_is_checked_against_the_reference_then_timed(runtime, kind):
    needs(runtime)
    result = bench.profile(BlockTarget(kind, 32, 4), 2, quick(runtime), memory=False)
    row = result.row()
    assert result.status == "ok" and result.reason == "" and row["status_reason"] == ""
    assert row["runtime"] == runtime == result.runtime and "impl" not in row
    assert 0 <= result.max_rel_error < 1e-4 and row["max_rel_error"] == result.max_rel_error
    if runtime == "reference":
        assert result.max_rel_error == 0  # the reference against itself, on the same input
    assert result.latency is not None and row["latency_median_ms"] > 0
    if runtime == "reference":
        assert math.isnan(result.convert_s)  # nothing to convert without torch.compile
    else:  # fast: container.optimize; onnxruntime / openvino: export and compile
        assert result.convert_s > 0 and row["convert_s"] == result.convert_s


def test_flops_are_the_reference_modules_whatever_the_runtime():
    needs("openvino")
    target = BlockTarget("mix", 32, 4)
    rows = {r: bench.profile(target, 2, quick(r), memory=False).row() for r in ("reference", "fast", "openvino")}
    assert len({(row["macs_fvcore"], row["params"]) for row in rows.values()}) == 1
    assert rows["reference"]["macs_fvcore"] > 0


def test_train_mode_on_a_torch_runtime_is_checked_before_the_weights_move():
    result = bench.profile(BlockTarget("mix", 32, 4), 2, quick("reference", mode="train"), memory=False)
    assert result.status == "ok" and result.max_rel_error == 0
    fast = bench.profile(BlockTarget("conv", 32, 4), 2, quick("fast", mode="train"), memory=False)
    assert fast.status == "ok" and fast.max_rel_error < 1e-4


@pytest.mark.parametrize("runtime", ["fast", "openvino"])
def test_a_runtime_that_computes_something_else_is_a_mismatch_without_a_latency(runtime, monkeypatch):
    needs(runtime)
    real = bench.workload.convert

    def off_by_one(*args, **kwargs):
        converted = real(*args, **kwargs)
        return dataclasses.replace(converted, output=lambda: converted.output() + 1)

    monkeypatch.setattr(bench.workload, "convert", off_by_one)
    result = bench.profile(BlockTarget("mix", 32, 4), 2, quick(runtime))
    row = result.row()
    assert result.status == row["status"] == "mismatch"
    assert result.latency is None and result.memory is None and "latency_median_ms" not in row
    assert result.max_rel_error > tolerance("fp32")
    assert "max relative error" in result.reason and "1e-04" in result.reason and "\n" not in result.reason
    assert row["params"] > 0 and row["macs_fvcore"] > 0  # the reference's figures are still there


def test_max_rel_error_is_inf_for_a_wrong_shape_or_a_non_finite_output():
    ref = torch.ones(2, 3)
    assert max_rel_error(ref, ref) == 0
    assert max_rel_error(ref * 1.5, ref) == pytest.approx(0.5)
    assert max_rel_error(torch.ones(3, 2), ref) == math.inf
    assert max_rel_error(torch.full((2, 3), math.nan), ref) == math.inf
    assert tolerance("fp32") == 1e-4 and tolerance("bf16") == tolerance("fp16") == 2e-2


@pytest.mark.parametrize("runtime", CONVERTERS)
def test_a_network_that_does_not_convert_is_export_failed_and_the_run_goes_on(runtime):
    needs(runtime)
    result = bench.profile(ModuleTarget(Bessel(), (4, 4, 4), "bessel"), 1, quick(runtime))
    row = result.row()
    assert result.status == row["status"] == "export_failed"
    assert result.latency is None and "latency_median_ms" not in row
    assert "bessel" in result.reason.lower() and "\n" not in result.reason and len(result.reason) <= 300
    assert row["status_reason"] == result.reason


def test_the_fast_runtime_on_a_module_it_has_no_fast_path_for_is_export_failed():
    result = bench.profile(ModuleTarget(nn.Conv2d(4, 4, 1), (4, 4, 4), "conv1x1"), 1, quick("fast"))
    assert result.status == "export_failed" and result.reason.startswith("TypeError: optimize")


def test_one_line_names_what_failed_without_colour_codes():
    error = RuntimeError("Failed. \x1b[96mstep 3/3\x1b[0m\n\n<class 'x.DispatchError'>: No ONNX function found for op")
    assert one_line(error) == "RuntimeError: No ONNX function found for op"
    assert one_line(ValueError("")) == "ValueError"
    assert isinstance(ExportFailed("why"), RuntimeError) and ExportFailed("why").reason == "why"


def test_a_converted_runtime_gets_its_process_rss_and_no_torch_allocator_peak():
    needs("openvino")
    with bench.RssWorker() as worker:
        result = bench.profile(BlockTarget("conv", 32, 4), 2, quick("openvino"), rss_worker=worker)
    row = result.row()
    assert result.status == "ok"
    assert result.memory.rss is not None and row["rss_peak_bytes"] > 0
    assert result.memory.cpu is None and "cpu_alloc_peak_bytes" not in row


def test_a_torch_runtime_keeps_its_allocator_peak():
    row = bench.profile(BlockTarget("conv", 32, 4), 2, quick("fast")).row()
    assert row["cpu_alloc_peak_bytes"] > 0


# Options: the runtime, its alias, and the combinations that make no sense


def test_impl_is_an_alias_of_runtime():
    options = Options(impl="fast")
    assert options.runtime == options.impl == "fast" and options == Options(runtime="fast")
    assert options.replace(impl="reference").runtime == "reference"
    assert options.replace(runtime="openvino").impl == "openvino"
    assert dataclasses.replace(options, dtype="bf16").runtime == "fast"
    assert pickle.loads(pickle.dumps(options)) == options  # the RSS worker gets it pickled
    assert "runtime" in options.columns() and "impl" not in options.columns()
    assert Options().runtime == "reference"


def test_an_unknown_runtime_lists_the_valid_ones():
    with pytest.raises(BenchInputError, match="--runtime 'tflite': valid runtimes: reference, fast, onnxruntime, "
                                              "openvino"):
        Options(runtime="tflite").validate()


@pytest.mark.parametrize(("runtime", "package"), [("openvino", "openvino"), ("onnxruntime", "onnxruntime"),
                                                  ("onnxruntime", "onnxscript")])
def test_a_runtime_whose_package_is_missing_names_the_package(runtime, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    message = f"--runtime {runtime}: needs the Python package '{package}' (pip install {package})"
    with pytest.raises(BenchInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_runtime(runtime)
    with pytest.raises(BenchInputError, match="needs the Python package"):
        Options(runtime=runtime).validate()


@pytest.mark.parametrize(("changes", "flag"), [
    (dict(runtime="openvino", compile=True), "--compile"),
    (dict(runtime="onnxruntime", compile=True), "--compile"),
    (dict(runtime="openvino", mode="train"), "--mode train"),
    (dict(runtime="onnxruntime", dtype="bf16"), "--dtype bf16"),
    (dict(runtime="onnxruntime", dtype="fp16"), "--dtype fp16"),
    (dict(runtime="onnxruntime", channels_last=True), "--channels-last"),
    (dict(runtime="openvino", channels_last=True), "--channels-last"),
])
def test_settings_that_make_no_sense_with_the_runtime_name_the_flag(changes, flag):
    needs(changes["runtime"])
    with pytest.raises(BenchInputError) as raised:
        Options(**changes).validate()
    assert str(raised.value).startswith(flag) and "\n" not in str(raised.value)


def test_the_torch_runtimes_keep_their_options():
    for runtime in TORCH_RUNTIMES:
        Options(runtime=runtime, compile=True, mode="train", channels_last=True).validate()
    needs("openvino")
    Options(runtime="openvino", dtype="bf16").validate()
