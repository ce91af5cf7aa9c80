"""A study this search writes opens in optuna-dashboard: the dashboard, started on loopback as a user would
start it, serves the study's trials with the user attributes and constraint values that Optuna reads
from the same storage. A fake latency and scorer put trials on both sides of the budget in a second.
"""
from __future__ import annotations

import contextlib
import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest

from search import make_storage, run_search
from search.trials import CONSTRAINT
from tests.search_helpers import FakeLatency, FakeScorer, settings

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is not installed (pip install -e .)")
DASHBOARD = Path(sys.executable).parent / "optuna-dashboard"
BUDGET_MS = 2.0
READY_DEADLINE_S = 60.0  # an upper bound for a slow, busy machine; the server is usually up in about a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@contextlib.contextmanager
def dashboard(storage: str, log: Path) -> Iterator[str]:
    """`optuna-dashboard <storage>` on a free loopback port; yields its base URL once /api/studies answers."""
    for _ in range(3):  # another process may take the free port between our probe and the server's bind
        port = free_port()
        with open(log, "w") as out:
            server = subprocess.Popen([str(DASHBOARD), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + READY_DEADLINE_S
            while server.poll() is None and time.monotonic() < deadline:
                try:
                    get_json(f"{url}/api/studies")
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.2)
            else:
                if server.poll() is not None and "Address already in use" in log.read_text():
                    continue
                pytest.fail(f"optuna-dashboard {storage} did not answer on port {port} "
                            f"(exit code {server.poll()}): {log.read_text()[-2000:]}")
            yield url
            return
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    pytest.fail(f"optuna-dashboard found no free port in 3 tries: {log.read_text()[-2000:]}")


def attrs(serialized: list[dict[str, str]]) -> dict[str, str]:
    return {a["key"]: a["value"] for a in serialized}


def shown_value(value: float) -> float | str:
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_a_search_study_opens_in_optuna_dashboard(tmp_path, backend):
    url = f"sqlite:///{tmp_path / 'studies.db'}" if backend == "sqlite" else None
    result = run_search(settings(tmp_path, budget_ms=BUDGET_MS, sampling={"n_trials": 8}, storage={"url": url},
                                 report={"recheck_margin": 0.0}),
                        latency_source=FakeLatency(), scorer=FakeScorer(), report=False)
    storage = url or str(result.study_dir / "study.journal")
    study = optuna.load_study(study_name="t", storage=url or make_storage(None, result.study_dir))
    trials = study.get_trials()
    assert {t.constraints[CONSTRAINT] > 0 for t in trials} == {True, False}, "want trials on both sides of the budget"

    with dashboard(storage, tmp_path / "dashboard.log") as base:
        summaries = get_json(f"{base}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["t"]
        assert float(attrs(summaries[0]["user_attrs"])["budget_ms"]) == BUDGET_MS
        detail = get_json(f"{base}/api/studies/{summaries[0]['study_id']}?after=0")

    shown = {t["number"]: t for t in detail["trials"]}
    assert sorted(shown) == [t.number for t in trials]
    for t in trials:
        seen = shown[t.number]
        assert seen["state"] == t.state.name.capitalize()
        assert seen["values"] == [shown_value(v) for v in t.values]
        # The dashboard greys out a trial whose constraint values are not all <= 0.
        assert seen["constraints"] == [t.constraints[CONSTRAINT]]
        user = attrs(seen["user_attrs"])
        assert json.loads(user["config"]) == t.user_attrs["config"]
        assert user["runtime"] == t.user_attrs["runtime"]
        assert float(user["latency_median_ms"]) == t.user_attrs["latency_median_ms"]
        params = {p["name"]: p["param_external_value"] for p in seen["params"]}
        assert params == {k: str(v) for k, v in t.params.items()}
    assert [b["values"] for b in detail["best_trials"]] == [[study.best_value]]
