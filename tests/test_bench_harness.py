"""The harness around the measurements: rows, out-of-memory, bad input, files, plots."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import bench
import bench.machine
from bench.kit import write_text
from bench.profiler import profile_variants
from bench.result import SAMPLE_COLUMNS
from bench.suite import Job, run_suite

REPO = Path(__file__).resolve().parents[1]
# rel_iqr=1.0 stops after min_runs on any machine; the generous cap only matters when one is busy.
FAST_STOP = bench.StopRule(rel_iqr=1.0, min_runs=3, min_time_s=0.0, max_time_s=5.0)


def test_profile_gives_one_complete_result_and_its_row_agrees():
    options = bench.Options(stop=FAST_STOP, threads=1)
    result = bench.profile(bench.BlockTarget("mix", 64, 7), 2, options)
    row = result.row()
    block = bench.BlockTarget("mix", 64, 7).build()
    assert result.status == row["status"] == "ok" and result.ok
    assert row["name"] == result.name == "mix@64x7" and row["batch_size"] == result.batch_size == 2
    assert row["params"] == result.params == sum(p.numel() for p in block.parameters())
    assert row["flops_2x_macs_fvcore"] == 2 * row["macs_fvcore"] == 2 * result.flops.macs_fvcore > 0
    assert row["work_flops"] == result.flops.work_flops == row["flops_2x_macs_fvcore"]  # inference
    assert row["threads"] == result.threads == 1 and row["runs"] == result.latency.runs >= 3
    assert row["latency_cold_ms"] == result.latency.cold_ms > 0
    assert row["latency_median_ms"] == result.latency.median_ms and row["noisy"] == result.latency.noisy
    assert row["latency_samples_ms"] == list(result.latency.times_ms)
    assert row["throughput_img_s"] == result.throughput_img_s == pytest.approx(2 / (result.latency.median_ms / 1e3))
    assert row["cpu_alloc_peak_bytes"] == result.memory.cpu.peak_bytes > 0
    assert row["cpu_allocated_during_call_bytes"] == result.memory.cpu.allocated_bytes
    assert math.isnan(row["compile_s"]) and result.bounds is None and "roofline_peak_flops" not in row


def test_profile_leaves_the_environment_to_the_suite(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("bench.profile took the environment (git subprocesses) itself")

    bench.machine.reference_speed("cpu", torch.get_num_threads())  # made on first use, with its environment
    monkeypatch.setattr(bench.env, "environment", forbidden)
    monkeypatch.setattr(bench.env, "_git", forbidden)
    result = bench.profile(bench.BlockTarget("conv", 32, 4), 1, bench.Options(stop=FAST_STOP),
                           flops=False, memory=False)
    assert result.ok and result.flops is None and result.memory is None
    assert not {"git_commit", "timestamp_utc", "cpu_model"} & set(result.row())


def test_compile_time_is_the_first_call_before_anything_else_runs_the_module(monkeypatch):
    import time

    def slow_first_call_compile(module):  # a stand-in for torch.compile: the first call compiles
        compiled = []

        def run(*args):
            if not compiled:
                time.sleep(0.5)
                compiled.append(True)
            return module(*args)
        return run

    monkeypatch.setattr(torch, "compile", slow_first_call_compile)
    row = bench.profile(bench.BlockTarget("mix", 32, 4), 2, bench.Options(stop=FAST_STOP, compile=True)).row()
    assert row["compile_s"] >= 0.5  # not hidden in the memory measurement, which also calls the module
    assert row["convert_s"] == row["compile_s"]  # compiling is the torch runtime's conversion, timed on its own
    assert max(row["latency_samples_ms"] + [row["latency_cold_ms"]]) < 500  # no timed call paid the compile


def test_memory_is_measured_on_a_steady_call_after_the_first():
    class LazyCache(torch.nn.Module):  # allocates 64 MiB on its first call and keeps it
        def forward(self, x):
            if not hasattr(self, "cache"):
                self.cache = torch.zeros(16 * 2**20)
            return x * 2

    result = bench.profile(LazyCache(), 2, bench.Options(stop=FAST_STOP), sample_shape=(256,))
    assert 2 * 256 * 4 <= result.memory.cpu.peak_bytes < 2**20  # the output, not the first call's 64 MiB cache


def test_training_step_counts_forward_and_backward():
    options = bench.Options(stop=FAST_STOP, mode="train")
    row = bench.profile(bench.BlockTarget("conv", 32, 6), 2, options).row()
    assert row["status"] == "ok" and row["mode"] == "train"
    assert row["work_flops"] > 2 * row["flops_flopcounter"]  # backward costs about twice the forward


class AllocatorFailure(torch.nn.Module):
    def forward(self, x):
        if x.shape[0] > 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return x * 2


def test_a_batch_that_does_not_fit_is_recorded_as_oom_and_the_sweep_goes_on():
    options = bench.Options(stop=FAST_STOP)
    results = [bench.profile(AllocatorFailure(), batch, options, sample_shape=(3, 8, 8), flops=False)
               for batch in (2, 8)]
    assert [r.status for r in results] == ["ok", "oom"]
    assert results[0].batch_size == 2 and results[1].batch_size == 8
    oom = results[1]
    assert oom.params == 0 and oom.latency is None and oom.memory is None  # ran out during the timing
    assert oom.row()["status"] == "oom" and oom.row()["latency_samples_ms"] == []
    assert "latency_median_ms" not in oom.row() and "throughput_img_s" not in oom.row()


def test_other_errors_are_not_mistaken_for_oom():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.profile(Broken(), 1, bench.Options(stop=FAST_STOP), sample_shape=(3,), flops=False)


@pytest.mark.parametrize("options,flag", [
    (bench.Options(dtype="fp8"), "--dtype"), (bench.Options(mode="serve"), "--mode"),
    (bench.Options(device="tpu"), "--device"), (bench.Options(threads=0), "--threads"),
])
def test_bad_options_name_the_flag(options, flag):
    with pytest.raises(bench.BenchInputError, match=flag):
        options.validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is missing")
def test_cuda_where_there_is_none_is_a_clear_error():
    with pytest.raises(bench.BenchInputError, match="CUDA is not available"):
        bench.Options(device="cuda").validate()


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--kinds", "transformer"], "valid kinds: conv, attn, mlp, mhmlp, mix, attn_mlp, attn_mhmlp"),
    (["--networks", "resnet50"], "valid networks: container, container_light"),
    (["--dtype", "fp8"], "--dtype 'fp8'"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "CUDA is not available")]))
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_cli_help_lists_every_option():
    out = run_cli("run", "--help").stdout
    for flag in ("--quick", "--device", "--dtype", "--channels-last", "--compile", "--mode", "--impl",
                 "--batch-sizes", "--threads", "--out"):
        assert flag in out


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    path = write_text(tmp_path / "results.csv", "old\n")
    with pytest.raises(KeyboardInterrupt):
        with bench.kit.atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["results.csv"]  # no temporary left behind


def test_run_suite_writes_the_same_rows_to_csv_and_json_and_a_report(tmp_path, monkeypatch):
    results, settings = [], []

    def recording_profile_variants(*args, **kwargs):
        results.extend(profile_variants(*args, **kwargs))
        return results[-len(args[2]):]

    def recording_environment(*setting):
        settings.append(setting)
        return bench.environment(*setting)

    monkeypatch.setattr(bench.suite, "profile_variants", recording_profile_variants)
    monkeypatch.setattr(bench.suite, "environment", recording_environment)
    options = bench.Options(stop=FAST_STOP)
    jobs = [Job(bench.BlockTarget("conv", 64, 7), b, options, "stage" if b == 1 else "batch-sweep", rss=False)
            for b in (1, 2)]
    jobs.append(Job(bench.BlockTarget("attn", 64, 7), 1, options, "stage", rss=False))
    frame = run_suite(jobs, tmp_path, rss=False, progress=False,
                      calibration_stop=bench.StopRule(min_runs=3, min_time_s=0.0, max_time_s=0.2))
    csv = pd.read_csv(tmp_path / "results.csv")
    records = json.loads((tmp_path / "results.json").read_text())
    assert len(csv) == len(records) == len(frame) == 3
    assert list(csv.columns) == list(records[0].keys())
    # The typed result's row is the written row, less the samples (their own file) and plus the
    # environment, taken once for the run's one (device, threads) setting, and the job's group.
    environment = list(bench.environment("cpu", results[0].threads))
    written = [c for c in results[0].row() if c not in SAMPLE_COLUMNS]
    assert list(csv.columns) == written + [c for c in environment if c not in written] + ["group"]
    assert settings == [("cpu", results[0].threads)] and csv["git_commit"].notna().all()
    assert csv["latency_median_ms"].tolist() == pytest.approx([r.latency.median_ms for r in results])
    assert csv["params"].tolist() == [r.params for r in results]
    samples = json.loads((tmp_path / "latency_samples.json").read_text())
    assert [s["samples_ms"] for s in samples] == [list(r.latency.times_ms) for r in results]
    report = (tmp_path / "report.md").read_text()
    assert "conv@64x7" in report and "roofline.png" in report and "latency_vs_batch.png" in report
    assert (tmp_path / "roofline.png").stat().st_size > 0 and (tmp_path / "latency_vs_batch.png").exists()
    assert {"achieved_flops", "fraction_of_peak", "flop_per_byte", "roofline_peak_flops"} <= set(csv.columns)
    assert csv["achieved_flops"].tolist() == pytest.approx([r.bounds.position.achieved_flops for r in results])


def test_affinity_command_draws_a_png(tmp_path):
    out = tmp_path / "affinity.png"
    result = run_cli("affinity", "--kind", "attn_mhmlp", "--dim", "64", "--side", "6", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_affinity_inside_a_network_with_its_weights(tmp_path):
    from bench.affinity import block_and_input

    weights = tmp_path / "light.pt"
    net = bench.NetworkTarget.named("container_light").build()
    torch.save(net.state_dict(), weights)
    block, x = block_and_input(network="container_light", block="blocks4.1", weights=weights)
    assert torch.equal(block.conv1.weight, net.blocks4[1].conv1.weight)
    assert x.shape == (1, 512, 7, 7)
    with pytest.raises(bench.BenchInputError, match="--block 'blocks9.0'"):
        block_and_input(network="container_light", block="blocks9.0")


class Allocates64MiB(torch.nn.Module):  # module level: the worker process unpickles it
    def forward(self, x):
        return torch.ones(64 * 2**20, dtype=torch.uint8)  # touched, so resident


def test_isolated_rss_sees_a_known_allocation():
    with bench.RssWorker() as worker:
        rss = worker.measure(bench.ModuleTarget(Allocates64MiB(), (1,)), 1, bench.Options(), 1)
    assert rss.call_delta_bytes >= 64 * 2**20
    assert rss.peak_bytes >= rss.before_call_bytes + 64 * 2**20


def test_the_batch_sweep_leaves_every_stage_at_its_own_batch():
    from bench.suite import default_jobs

    jobs = default_jobs([bench.Options()], kinds=["mix"], networks=[], batch_sizes=[32, 2])
    assert [(j.target.name, j.batch_size) for j in jobs if j.group == "stage"] == [
        ("mix@64x56", 8), ("mix@128x28", 16), ("mix@320x14", 32), ("mix@512x7", 64)]
    assert [(j.target.name, j.batch_size) for j in jobs if j.group == "batch-sweep"] == [("mix@320x14", 2)]


def test_default_jobs_measure_the_variants_of_a_workload_back_to_back():
    from bench.suite import default_jobs

    variants = [bench.Options(impl=impl, dtype=dtype) for dtype in ("fp32", "bf16") for impl in ("reference", "fast")]
    jobs = default_jobs(variants, kinds=["mix"], networks=["container_light"], batch_sizes=[32])
    order = [(j.target.name, j.batch_size) for j in jobs]
    assert order == [w for w in dict.fromkeys(order) for _ in range(4)]  # four variants in a row, each workload
    assert [(j.options.dtype, j.options.impl) for j in jobs[:4]] == [
        ("fp32", "reference"), ("fp32", "fast"), ("bf16", "reference"), ("bf16", "fast")]
