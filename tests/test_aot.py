"""The `aot` runtime (bench.runtimes.aot_runtime): an AOTInductor package of the faster of the reference and fast
modules, checked against the reference, cached so that nothing compiles twice.

A compile costs ~10 s here: every test runs in one results root for the session, on one tiny block and one tiny
network (32x32 inputs), so each package compiles once and later tests find it in the cache. The figures asserted
are statuses, errors, keys and cache flags, never times.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import torch._inductor

import bench
import bench.cli
import bench.suite
import container
from bench import BenchInputError, BlockTarget, NetworkTarget, Options, StopRule
from bench.kit import RESULTS_ENV, results_root
from bench.ops.profile import ACTIVATION, ATTENTION, DEPTHWISE, GEMM, LAYOUT, NORM, categorize, profile_ops
from bench.roofline import Roofline
from bench.runtimes import ExportFailed, check_runtime, convert, tolerance
from bench.runtimes import aot_runtime
from bench.runtimes.aot_runtime import cache_dir, compile_aot_package
from bench.workload import build_reference, convert_workload

QUICK = StopRule(rel_iqr=1.0, min_runs=2, min_time_s=0.0, max_time_s=0.05)
BLOCK = BlockTarget("mix", 16, 32)
NETWORK = NetworkTarget(container.as_config({
    "stages": [dict(depth=1, dim=16, heads=2, kind="conv", kernel_size=3, mlp_ratio=2.0, patch_size=4),
               dict(depth=1, dim=32, heads=4, kind="mix", kernel_size=5, mlp_ratio=2.0, patch_size=2)],
    "image_size": 32, "num_classes": 5}), "tiny")


def tiny_block() -> torch.nn.Module:
    """BLOCK's module, for --model: built from the same seed, it is the same module (and the same packages)."""
    return BLOCK.build()


def aot(**changes) -> Options:
    return Options(runtime="aot", threads=1, stop=QUICK, **changes)


@pytest.fixture(scope="session")
def aot_root(tmp_path_factory):
    return tmp_path_factory.mktemp("aot-results")


@pytest.fixture(autouse=True)
def _results_in_the_session_root(aot_root, monkeypatch):
    monkeypatch.setenv(RESULTS_ENV, str(aot_root))


def _choices(package) -> list[dict]:
    """The stored choices that name `package` (the same package can be chosen among other candidates)."""
    choices = [json.loads(p.read_text()) for p in cache_dir().glob("choice-*.json")]
    return [c for c in choices if c["package"] == package.path.name]


@pytest.mark.parametrize("target", [BLOCK, NETWORK], ids=["block", "network"])
def test_the_package_computes_what_the_reference_does(target):
    options = aot()
    reference, x = build_reference(target, 1, options)
    workload = convert_workload(reference, x, options)
    assert workload.runtime == "aot" and workload.module is None and workload.torch_allocates
    assert 0 <= workload.max_rel_error <= tolerance("fp32")
    assert workload.convert_s > 0 and isinstance(workload.step(), torch.Tensor)
    package = compile_aot_package(reference, x, options)
    assert package.path.parent == results_root() / "cache" / "aot" and package.path.suffix == ".pt2"
    assert package.cached and package.source in ("reference", "fast") and package.fallback == ""
    [choice] = [c for c in _choices(package) if set(c["candidates"]) == {"reference", "fast"}]
    assert choice["source"] == package.source
    assert all(c["median_ms"] > 0 for c in choice["candidates"].values())  # both timed, the faster chosen
    assert choice["candidates"][package.source]["median_ms"] == min(
        c["median_ms"] for c in choice["candidates"].values())


def test_a_second_convert_compiles_and_times_nothing(monkeypatch):
    options = aot()
    reference, x = build_reference(BLOCK, 1, options)
    first = compile_aot_package(reference, x, options)  # compiles, unless an earlier test did

    def refuse(*args, **kwargs):
        raise AssertionError("compiled or timed again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", refuse)
    monkeypatch.setattr(aot_runtime, "measure_rounds", refuse)
    again = compile_aot_package(*build_reference(BLOCK, 1, options), options)
    assert again.cached and again.path == first.path and again.source == first.source
    converted = convert("aot", *build_reference(BLOCK, 1, options), options)
    assert converted.convert_s > 0 and converted.output().shape == x.shape


def test_a_changed_weight_or_batch_gives_another_key():
    options = aot()
    reference, x = build_reference(BLOCK, 1, options)
    keys = {s: c.key for s, c in aot_runtime._candidates(reference, x, options)[0].items()}
    assert set(keys) == {"reference", "fast"} and keys["reference"] != keys["fast"]
    assert {s: c.key for s, c in aot_runtime._candidates(reference, x, options)[0].items()} == keys  # stable
    with torch.no_grad():
        reference.mlp.fc2.weight[0, 0] += 1e-3
    changed = {s: c.key for s, c in aot_runtime._candidates(reference, x, options)[0].items()}
    assert changed["reference"] != keys["reference"] and changed["fast"] != keys["fast"]
    batch = aot_runtime._candidates(*build_reference(BLOCK, 2, options), options)[0]
    assert batch["reference"].key != keys["reference"]


def test_a_fast_module_that_does_not_export_falls_back_to_the_reference_with_its_reason(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no export today\nsecond line")

    monkeypatch.setattr(aot_runtime, "_frozen_fast", broken)
    options = aot()
    reference, x = build_reference(NETWORK, 1, options)
    package = compile_aot_package(reference, x, options)
    assert package.source == "reference" and package.fallback == "fast: RuntimeError: no export today"
    assert [c["fallback"] for c in _choices(package) if list(c["candidates"]) == ["reference"]] == [package.fallback]


def test_a_module_container_optimize_does_not_take_has_the_reference_alone():
    candidates, fallback = aot_runtime._candidates(torch.nn.Conv2d(4, 4, 1), torch.randn(1, 4, 8, 8), aot())
    assert list(candidates) == ["reference"] and fallback == ""


def test_bf16_exports_the_module_under_autocast():
    options = aot(dtype="bf16")
    options.validate()
    workload = convert_workload(*build_reference(BLOCK, 1, options), options)
    assert 0 < workload.max_rel_error <= tolerance("bf16")  # computed in bf16, as the reference under autocast


def test_train_mode_is_export_failed_in_one_line():
    options = aot(mode="train")
    reference, x = build_reference(BLOCK, 1, options)
    with pytest.raises(ExportFailed) as failed:
        convert("aot", reference, x, options)
    assert "--mode train" in failed.value.reason and "\n" not in failed.value.reason
    with pytest.raises(BenchInputError, match="^--mode train"):
        options.validate()


def test_no_cpp_compiler_fails_in_one_line_naming_the_runtime():
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-cxx",)}):
        with pytest.raises(BenchInputError) as raised:
            check_runtime("aot")
        with pytest.raises(BenchInputError, match="^--runtime aot"):
            Options(runtime="aot").validate()
    message = str(raised.value)
    assert message.startswith("--runtime aot: needs a C++ compiler") and "no-such-cxx" in message
    assert "\n" not in message
    check_runtime("aot")  # the compiler is found again


def test_python_m_bench_runs_an_aot_row(tmp_path, monkeypatch):
    roofline = Roofline("cpu", "fp32", peak_flops=50e9, gemm_size=1024, bandwidth_bytes_s=10e9)
    monkeypatch.setattr(bench.suite, "calibrate", lambda device, dtype, **kwargs: roofline)
    out = tmp_path / "run"
    assert bench.cli.main(["--model", "tests.test_aot:tiny_block", "--input-shape", "16,32,32", "--runtime", "aot",
                           "--threads", "1", "--quick", "--no-progress", "--out", str(out)]) == 0
    [row] = pd.read_csv(out / "results.csv").to_dict("records")
    assert row["runtime"] == "aot" and row["status"] == "ok" and row["latency_median_ms"] > 0
    assert row["max_rel_error"] <= tolerance("fp32") and row["convert_s"] > 0
    assert row["cpu_alloc_peak_bytes"] > 0  # the package allocates through torch's allocator


def test_ops_profile_reads_the_packages_kernels():
    profile = profile_ops(BLOCK, 1, aot(), runs=2)
    assert profile.runtime == "aot" and profile.total_ms > 0
    ops = set(profile.rows["op"])
    assert any("cpp_fused" in op for op in ops)  # the generated kernels are seen, not only the aten ops
    assert categorize("graph_0_cpp_fused_gelu_view_3", "aot") == ACTIVATION
    assert categorize("cpp_fused_add_native_layer_norm_1", "aot") == NORM
    assert categorize("graph_0_cpp_fused_clone_0", "aot") == LAYOUT
    assert categorize("aoti_torch_cpu_addmm_out", "aot") == GEMM
    assert categorize("aoti_torch_cpu__scaled_dot_product_flash_attention_for_cpu", "aot") == ATTENTION
    assert categorize("aten::mkldnn_convolution", "aot", [(1, 32, 8, 8), (32, 1, 3, 3)]) == DEPTHWISE


@pytest.mark.cuda
def test_the_package_runs_on_cuda():
    options = aot(device="cuda")
    options.validate()
    workload = convert_workload(*build_reference(BLOCK, 1, options), options)
    assert 0 <= workload.max_rel_error <= tolerance("fp32") and workload.step().is_cuda
