"""The seed's own MixBlock (../shared/seed/seed_mixblock.py, beside this checkout), loaded by file path.

Tests that compare with it use `requires_seed`. Without the seed they skip, saying where it is expected,
unless CONTAINER_BENCH_REQUIRE_SEED=1 (set by .ci/run, which always has ../shared), where a missing seed fails.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

SEED_FILE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "seed_mixblock.py"
REQUIRE_ENV = "CONTAINER_BENCH_REQUIRE_SEED"
MISSING = (f"the seed's module {SEED_FILE} is not beside this checkout (../shared/seed/); "
           f".ci/run has it and sets {REQUIRE_ENV}=1, so CI runs this test")


def seed_module() -> ModuleType:
    """The seed's module, or a skip (a failure under CONTAINER_BENCH_REQUIRE_SEED=1) where it is missing."""
    if not SEED_FILE.exists():
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    spec = importlib.util.spec_from_file_location("seed_mixblock", SEED_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
