"""tests/perf: pytest-benchmark benchmarks of the regression gate's suite, off by default.

`make test` (plain `pytest`) collects these and skips them, so the unit tests stay fast. They run
when asked for, in any of these ways:

    .venv/bin/python -m pytest tests/perf --benchmark-autosave       # save a run to .benchmarks/
    .venv/bin/python -m pytest tests/perf --benchmark-compare --benchmark-compare-fail=median:10%
    .venv/bin/python -m pytest tests/perf --benchmark-enable         # (or --benchmark-only / -save / -json)
    CONTAINER_BENCH_PERF=1 .venv/bin/python -m pytest tests/perf     # or: -m perf
"""
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENABLING_OPTIONS = ("benchmark_autosave", "benchmark_compare", "benchmark_save", "benchmark_json",
                    "benchmark_only", "benchmark_enable")


def perf_enabled(config: pytest.Config) -> bool:
    if os.environ.get("CONTAINER_BENCH_PERF", "") not in ("", "0"):
        return True
    if "perf" in (config.getoption("markexpr", "") or ""):
        return True
    return any(bool(config.getoption(name, None)) for name in ENABLING_OPTIONS)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "perf: a pytest-benchmark benchmark of the gate's suite (tests/perf)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [item for item in items if HERE in Path(str(item.fspath)).resolve().parents]
    for item in mine:
        item.add_marker(pytest.mark.perf)
    if perf_enabled(config):
        return
    skip = pytest.mark.skip(reason="perf benchmarks: run with --benchmark-autosave / --benchmark-compare / "
                                   "--benchmark-enable, -m perf, or CONTAINER_BENCH_PERF=1")
    for item in mine:
        item.add_marker(skip)
