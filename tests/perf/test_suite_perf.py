"""The regression gate's default suite (bench.regress.load_suite()) as pytest-benchmark benchmarks.

The same rows, built the same way (bench.build_workload(...).step on the row's runtime, 1 intra-op
thread by default), plus the gate's calibration workload, so that a saved run can be normalised by hand. For the
statistics that decide (calibration interleaved call by call, an effect size and a test), use
`make regress`; this is the flow for people who prefer pytest-benchmark's own save / compare:

    .venv/bin/python -m pytest tests/perf --benchmark-autosave
    ... change something ...
    .venv/bin/python -m pytest tests/perf --benchmark-compare --benchmark-compare-fail=median:10%

pytest-benchmark compares raw times against a single saved run, so on a shared machine expect it
to cry wolf now and then. Steadier figures: run with the gate's malloc settings,
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=268435456 (see bench.regress.MALLOC_ENV).
CONTAINER_BENCH_PERF_THREADS sets the thread count (default 1, as the gate).
"""
import os

import pytest
import torch

from bench import build_workload
from bench.regress import load_suite
from bench.regress.worker import build_target, calibration_step, row_options

THREADS = int(os.environ.get("CONTAINER_BENCH_PERF_THREADS", "1"))
ROWS = load_suite().rows


@pytest.fixture(autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("row", ROWS, ids=[r.name.replace(" ", "-") for r in ROWS])
def test_suite_row(benchmark, row):
    target = build_target(row.spec())
    workload = build_workload(target, row.batch, row_options(row.runtime, threads=THREADS, dtype=row.dtype))
    benchmark.group = "container-bench regress suite"
    benchmark.extra_info.update(row.spec() | {"threads": THREADS,
                                              "params": sum(p.numel() for p in workload.eager.parameters())})
    out = benchmark(workload.step)
    assert out.shape[0] == row.batch


def test_calibration(benchmark):
    """The gate's calibration workload: divide a row's time by this one's for a machine-independent figure."""
    benchmark.group = "container-bench regress suite"
    benchmark.extra_info["threads"] = THREADS
    benchmark(calibration_step())
