"""Many workers on one study: two processes on a real PostgreSQL server, and on the embedded default.

The PostgreSQL tests start a throwaway server (initdb + pg_ctl in a temporary directory, a unix socket
only), run two worker processes on one study, and check that every trial is recorded exactly once,
that the two never measured at the same time (the machine lock), and that the report covers every
trial. They skip where the PostgreSQL server binaries are missing (.ci/run installs them), unless
CONTAINER_BENCH_REQUIRE_POSTGRES=1, where a missing server fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.storage import make_storage
from tests.pg_server import ThrowawayPostgres, find_bin_dir

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
# On the tiny space 5/16 of random configs fit 1.9 ms of `cost`: the start-up trials split it all but surely
# (at 3 ms, 13/16 fit, and all of the ten random start-up trials fitted about one run in eight).
SPLITTING_BUDGET_MS = 1.9


@pytest.fixture(scope="module")
def postgres():
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found; .ci/run installs Debian's postgresql"
        if os.environ.get("CONTAINER_BENCH_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary) is needed for postgresql:// storage")
    server = ThrowawayPostgres(bin_dir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CONTAINER_BENCH_SEARCH_LOCK", None)
    return env


def _start_together(commands: list[list[str]], go: Path, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Start the workers, wait until each has imported everything, then let them all go at once."""
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    try:
        deadline = time.monotonic() + timeout
        while len(list(go.parent.glob(f"{go.name}.ready-*"))) < len(procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        go.touch()
        out = []
        for p in procs:
            stdout, stderr = p.communicate(timeout=timeout)
            out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _worker_command(tmp_path: Path, log: Path, go: Path, trials: int, storage: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "tests.search_worker", "--tmp", str(tmp_path), "--study", "shared",
           "--trials", str(trials), "--log", str(log), "--go", str(go), "--sleep", "0.05",
           "--workers", str(WORKERS), "--budget-ms", str(SPLITTING_BUDGET_MS)]
    return cmd + (["--storage", storage] if storage else [])


def _check_shared_study(tmp_path: Path, storage_url: str | None, log: Path, results: list, trials: int) -> None:
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(line) for line in log.read_text().splitlines()]
    pids = {e["pid"] for e in events if e["event"] == "done"}
    assert len(pids) == WORKERS

    storage = make_storage(storage_url, tmp_path / "results" / "shared")
    study = optuna.load_study(study_name="shared", storage=storage)
    recorded = study.get_trials(deepcopy=False)
    numbers = [t.number for t in recorded]
    # Every trial recorded exactly once: unique, gap-free numbers; each run by exactly one live worker.
    assert sorted(numbers) == list(range(len(recorded)))
    assert len({t._trial_id for t in recorded}) == len(recorded)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in recorded), [t.state for t in recorded]
    # The target is the study's, not each worker's: at most one in-flight trial per extra worker over it.
    assert trials <= len(recorded) <= trials + WORKERS - 1
    by_worker = {t.user_attrs["worker"]["pid"] for t in recorded}
    assert by_worker <= pids and len(by_worker) == WORKERS, "both workers should have run trials"
    scored = [e for e in events if e["event"] == "trial"]
    assert len(scored) == len(recorded), "one objective evaluation per recorded trial, no more, no less"
    for pid in pids:
        assert sum(e["pid"] == pid for e in scored) == sum(t.user_attrs["worker"]["pid"] == pid for t in recorded)

    # The machine lock: no two measurements (of any worker) overlap in time.
    spans = sorted((e["start"], e["end"], e["pid"]) for e in events if e["event"] == "measure")
    assert len({pid for _, _, pid in spans}) == WORKERS, "both workers should have measured"
    for (s0, e0, p0), (s1, e1, p1) in zip(spans, spans[1:]):
        assert s1 >= e0 - 1e-3, f"measurements of {p0} and {p1} overlap: [{s0}, {e0}] and [{s1}, {e1}]"
    # The latency cache in the shared study directory: a config is measured once for its trials, plus
    # at most once per worker when the ranked ones are measured again.
    from collections import Counter

    feasible = [t for t in recorded if t.constraints and all(v <= 0 for v in t.constraints.values())]
    counts = Counter(e["config"] for e in events if e["event"] == "measure")
    assert max(counts.values()) <= 1 + WORKERS

    # The report written by the last worker covers every trial and ranks every feasible one.
    study_dir = tmp_path / "results" / "shared"
    frame = pd.read_csv(study_dir / "trials.csv")
    assert sorted(frame["trial"]) == sorted(numbers)
    assert set(frame.loc[frame["feasible"].astype(bool), "trial"]) == {t.number for t in feasible}
    assert frame.loc[frame["feasible"].astype(bool), "rechecked"].astype(bool).all()
    ranking = pd.read_csv(study_dir / "ranking.csv")
    kept = frame["feasible"].astype(bool) & ~frame["dropped"].astype(bool)  # the re-check keeps 5% headroom
    assert set(ranking["trial"]) == set(frame.loc[kept, "trial"]) and len(ranking) > 0
    assert 0 < len(feasible) < len(recorded)  # the budget splits the tiny space


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres):
    url = postgres.create_database("study_pg")
    log, go, trials = tmp_path / "events.jsonl", tmp_path / "go", 16
    results = _start_together([_worker_command(tmp_path, log, go, trials, url) for _ in range(WORKERS)], go)
    _check_shared_study(tmp_path, url, log, results, trials)


@pytest.mark.slow
def test_two_workers_share_one_study_in_the_default_journal(tmp_path):
    log, go, trials = tmp_path / "events.jsonl", tmp_path / "go", 16
    results = _start_together([_worker_command(tmp_path, log, go, trials, None) for _ in range(WORKERS)], go)
    _check_shared_study(tmp_path, None, log, results, trials)
    assert (tmp_path / "results" / "shared" / "study.journal").exists()


@pytest.mark.slow
def test_cli_workers_on_postgresql(tmp_path, postgres):
    """The command line itself, twice, on one PostgreSQL study: real (tiny) latency measurements under the lock."""
    import yaml

    from tests.search_helpers import TINY_SPACE

    url = postgres.create_database("study_cli")
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    cmd = [sys.executable, "-m", "search", "--budget-ms", "50", "--trials", "6", "--study", "cli",
           "--storage", url, "--results-dir", str(tmp_path / "results"), "--space", str(space),
           "--image-size", "32", "--threads", "1", "--objective", "params", "--stop-min-s", "0",
           "--stop-max-s", "0.05", "--stop-min-runs", "3", "--no-progress", "--lock-file", str(tmp_path / "lock"),
           "--no-predictor"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(WORKERS)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="cli", storage=make_storage(url, tmp_path / "results" / "cli"))
    recorded = study.get_trials(deepcopy=False)
    assert sorted(t.number for t in recorded) == list(range(len(recorded)))
    assert 6 <= len(recorded) <= 6 + WORKERS - 1
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in recorded)
    frame = pd.read_csv(tmp_path / "results" / "cli" / "trials.csv")
    assert sorted(frame["trial"]) == sorted(t.number for t in recorded)
    ranking = pd.read_csv(tmp_path / "results" / "cli" / "ranking.csv")
    kept = frame["feasible"].astype(bool) & ~frame["dropped"].astype(bool)
    assert set(ranking["trial"]) == set(frame.loc[kept, "trial"])


def test_a_plain_postgresql_url_uses_the_installed_driver(tmp_path, postgres):
    """`postgresql://` as the docs write it: SQLAlchemy 2.1 reads it as psycopg 3, which is not installed."""
    url = postgres.create_database("plain_url").replace("postgresql+psycopg2://", "postgresql://", 1)
    study = optuna.create_study(study_name="plain", storage=make_storage(url, tmp_path))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="plain", storage=make_storage(url, tmp_path)).trials) == 2
