"""No password leaks from a storage URL, and a measuring lock nobody else can plant: search.storage.redacted,
$CONTAINER_BENCH_STORAGE, and search.latency.MachineLock's default path, mode and refusal of a symbolic link."""
from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from search import MachineLock, SearchInputError, make_storage, redacted, run_search, write_report
from search.__main__ import main, parser
from search.latency import LOCK_ENV, LOCK_NAME, default_lock_path
from search.storage import STORAGE_ENV

from tests.search_helpers import TINY_SPACE, FakeLatency, FakeScorer, settings

SECRET = "s3cretPW"
BAD_URL = f"postgresql://alice:{SECRET}@127.0.0.1:1/db"  # nothing listens on port 1


# --- the storage URL --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url,shown", [
    (BAD_URL, "postgresql://alice:***@127.0.0.1:1/db"),
    (f"mysql+pymysql://bob:{SECRET}@db-host/optuna", "mysql+pymysql://bob:***@db-host/optuna"),
    (f"postgresql://alice@db-host/optuna?password={SECRET}", "postgresql://alice@db-host/optuna?password=***"),
    (f"postgresql://alice:{SECRET}@db-host:notaport/optuna", "postgresql://alice:***@db-host:notaport/optuna"),
])
def test_redacted_hides_the_password(url, shown):
    assert redacted(url) == shown and SECRET not in redacted(url)


@pytest.mark.parametrize("url", ["sqlite:///results/s.db", "postgresql+psycopg2://bench@/db?host=/tmp/x&port=5",
                                 "results/search/t/study.journal", "journal:/x/y.journal", "/a:b@c/study.log"])
def test_redacted_leaves_what_has_no_password_unchanged(url):
    assert redacted(url) == url
    assert redacted(None) is None


def _cli(tmp_path: Path, *extra: str) -> list[str]:
    space = tmp_path / "space.json"
    space.write_text(json.dumps(TINY_SPACE))
    return ["--budget-ms", "10", "--space", str(space), "--image-size", "32", "--threads", "1", "--results-dir",
            str(tmp_path / "results"), "--stop-max-s", "0.05", "--stop-min-s", "0", "--stop-min-runs", "3",
            "--proxy-inits", "1", "--no-progress", "--lock-file", str(tmp_path / "lock"), "--no-predictor",
            *extra]


@pytest.mark.parametrize("driver", ["postgresql", "postgresql+psycopg2"])  # the second gets as far as connecting
def test_a_bad_storage_url_fails_without_printing_its_password(tmp_path, capsys, monkeypatch, driver):
    pytest.importorskip("psycopg2")
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert main(_cli(tmp_path, "--storage", BAD_URL.replace("postgresql", driver, 1))) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out and SECRET not in err
    assert err.strip().splitlines() == [err.strip()] and f"{driver}://alice:***@127.0.0.1:1/db" in err


def test_the_storage_url_comes_from_the_environment_when_the_flag_is_absent(tmp_path, capsys, monkeypatch):
    pytest.importorskip("psycopg2")
    monkeypatch.setenv(STORAGE_ENV, BAD_URL)
    assert parser().parse_args(["--budget-ms", "1"]).storage == BAD_URL
    assert parser().parse_args(["--budget-ms", "1", "--storage", "sqlite:///x.db"]).storage == "sqlite:///x.db"
    assert main(_cli(tmp_path)) == 2  # the search tried the environment's URL
    out, err = capsys.readouterr()
    assert "alice:***@127.0.0.1:1" in err and SECRET not in out + err
    monkeypatch.setenv(STORAGE_ENV, "")
    assert parser().parse_args(["--budget-ms", "1"]).storage is None
    assert SECRET not in parser().format_help()


def test_study_json_never_holds_a_password(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    s = settings(tmp_path, sampling={"n_trials": 4}, storage={"url": url})
    result = run_search(s, latency_source=FakeLatency(), scorer=FakeScorer())
    study_json = tmp_path / "results" / "t" / "study.json"
    assert json.loads(study_json.read_text())["storage"] == url  # no password: written as given
    # The report writer with a URL that has one (a sqlite URL cannot carry a password).
    study = optuna.load_study(study_name="t", storage=make_storage(url, s.study_dir))
    with_password = replace(s, storage=replace(s.storage, url=f"postgresql://alice:{SECRET}@db-host/optuna"))
    assert SECRET not in repr(with_password)  # the settings' repr leaves the storage URL out
    write_report(result, study, with_password)
    assert json.loads(study_json.read_text())["storage"] == "postgresql://alice:***@db-host/optuna"
    assert not [p.name for p in s.study_dir.iterdir() if p.is_file() and SECRET.encode() in p.read_bytes()]


@pytest.mark.slow
def test_study_json_on_postgresql_with_a_password(tmp_path):
    """The throwaway server of tests/test_postgres.py trusts its socket: the password is accepted and ignored."""
    from tests.pg_server import ThrowawayPostgres, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    pytest.importorskip("psycopg2")
    server = ThrowawayPostgres(bin_dir)
    try:
        server.start()
        url = server.create_database("secret").replace("bench@", f"bench:{SECRET}@")
        run_search(settings(tmp_path, sampling={"n_trials": 3}, storage={"url": url}), latency_source=FakeLatency(),
                   scorer=FakeScorer())
        written = json.loads((tmp_path / "results" / "t" / "study.json").read_text())["storage"]
        assert SECRET not in written and written.startswith("postgresql+psycopg2://bench:***@/secret")
    finally:
        server.stop()


# --- the measuring lock -----------------------------------------------------------------------------------------


def test_the_default_lock_is_not_in_tmp(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = default_lock_path()
    assert path.parent != Path("/tmp") and path.parent.name == ".locks" and path.name == LOCK_NAME
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert default_lock_path() == runtime / LOCK_NAME == MachineLock().path
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert default_lock_path().parent.name == ".locks"
    monkeypatch.setenv(LOCK_ENV, str(tmp_path / "env.lock"))
    assert MachineLock().path == tmp_path / "env.lock" and MachineLock(tmp_path / "x").path == tmp_path / "x"


def test_the_default_lock_is_private_to_the_user(tmp_path, monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("CONTAINER_BENCH_RESULTS", str(tmp_path / "root"))
    lock = MachineLock(announce=False)
    assert lock.path == tmp_path / "root" / ".locks" / LOCK_NAME
    with lock:
        pass
    assert stat.S_IMODE(lock.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
    assert (lock.path.parent / ".gitignore").read_text() == "*\n"


def test_a_lock_file_is_created_0600(tmp_path):
    old = os.umask(0)
    try:
        with MachineLock(tmp_path / "sub" / "lock", announce=False) as lock:
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("target_exists", [True, False])
def test_a_symlink_at_the_lock_path_is_refused(tmp_path, target_exists):
    target = tmp_path / "target"
    if target_exists:
        target.write_text("")
    link = tmp_path / "lock"
    link.symlink_to(target)
    with pytest.raises(SearchInputError, match="symbolic link") as info:
        with MachineLock(link, announce=False):
            pass
    assert len(str(info.value).splitlines()) == 1 and str(link) in str(info.value)
    assert target.exists() == target_exists  # nothing was created through the link
    with MachineLock(tmp_path / "other", announce=False):  # the lock is usable again after a refusal
        pass


def test_the_command_refuses_a_symlinked_lock_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    args = _cli(tmp_path)
    (tmp_path / "lock").symlink_to(tmp_path / "elsewhere")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--lock-file" in err and "symbolic link" in err
    assert not (tmp_path / "elsewhere").exists()
