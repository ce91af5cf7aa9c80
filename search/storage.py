"""Where a study lives and how workers share it: the storage, the join protocol, lost-trial recovery.

The default storage is a journal file in the study directory (no server, survives a kill); any
Optuna storage URL (sqlite:///..., postgresql://..., mysql+pymysql://...) gives an RDB storage with
heartbeats, so a dead worker's trial is failed and retried. A worker joins a study only if it
measures on the same hardware, deployment setting (runtime included), budget, objective and space (`check_identity`).

A storage URL may carry a password: everything the project prints or writes shows it through `redacted`, and
`python -m search` reads the URL from $CONTAINER_BENCH_STORAGE (STORAGE_ENV) when `--storage` is not given, so that
it need not be on a command line.
"""
from __future__ import annotations

import dataclasses

import datetime as dt
import importlib.util
import os
import random
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

import bench
import bench.machine

from search.latency import Deployment
from search.settings import WorkerMismatchError
from search.space import SearchInputError
from search.trials import TrialRecord

SEARCH_FORMAT = 1
STORAGE_ENV = "CONTAINER_BENCH_STORAGE"  # `--storage`'s default: the URL need not be on a command line
# A study recorded before a deployment field existed was measured as this value (before issue 14 every
# latency was the eager reference's), so a worker on another runtime is refused, naming --runtime.
LEGACY_DEPLOYMENT: dict[str, Any] = {"runtime": "reference"}
# Workers started together on an empty database race to create Optuna's tables; these are the loser's errors.
_CREATION_RACE = ("duplicate key value", "already exists", "UniqueViolation", "Duplicate entry", "IntegrityError",
                  "database is locked")


# Query parameters a driver takes a password from (psycopg2: ?password=...).
_SECRET_QUERY_KEYS = {"password", "passwd", "pwd"}
# user:password@ after a scheme, for a string SQLAlchemy cannot parse (a bad port, say).
_USERINFO = re.compile(r"(?P<user>://[^:/@?#\s]*):(?P<password>[^@/?#\s]*)@")


def redacted(url: str | None) -> str | None:
    """`url` as it may be printed or written: the password of a storage URL (in its user part, or a `password=`
    query parameter) shown as ***, through SQLAlchemy's make_url(url).render_as_string(hide_password=True). A URL
    without a password, a file path (a journal) or anything else that is not a URL comes back unchanged."""
    if url is None:
        return None
    try:
        parsed = make_url(url)
    except Exception:  # not a URL SQLAlchemy can parse: a journal path, or a URL with a bad port
        return _USERINFO.sub(r"\g<user>:***@", url)
    secret = {k: "***" for k in parsed.query if k.lower() in _SECRET_QUERY_KEYS}
    if parsed.password is None and not secret:
        return url
    if secret:
        parsed = parsed.update_query_dict(secret)
    shown = parsed.render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # the query's *** as the user part's, not percent-encoded


def _without_secrets(text: str, url: str) -> str:
    """An error message about `url` with the URL redacted and its password nowhere (a driver may quote either)."""
    text = text.replace(url, redacted(url) or "")
    secrets = [m.group("password") for m in _USERINFO.finditer(url)]  # as written (percent-encoded, say)
    try:
        parsed = make_url(url)
        secrets += [str(parsed.password or "")] + [str(v) for k, v in parsed.query.items()
                                                   if k.lower() in _SECRET_QUERY_KEYS]
    except Exception:
        pass
    for secret in secrets:
        if len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def with_installed_driver(url: str) -> str:
    """A plain `postgresql://` URL on the driver this project installs (psycopg2): SQLAlchemy 2.1 reads it as
    psycopg 3, which is not installed, so the URL the docs show would fail with "no module named psycopg"."""
    if not url.startswith("postgresql://") or importlib.util.find_spec("psycopg") is not None:
        return url
    return "postgresql+psycopg2://" + url.removeprefix("postgresql://")


def make_storage(url: str | None, study_dir: Path) -> optuna.storages.BaseStorage:
    """A journal file in `study_dir` when `url` is None (or a journal path); an RDB storage otherwise."""
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(study_dir / "study.journal")))
    if url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = url.removeprefix("journal:").removeprefix("//")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    driver_url = with_installed_driver(url)  # messages name the URL as given
    for attempt in range(6):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", FutureWarning)
                return RDBStorage(driver_url, heartbeat_interval=30, grace_period=120,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))
        except Exception as e:  # a bad URL, a missing driver, an unreachable server
            text = str(e)
            if attempt < 5 and any(m in text for m in _CREATION_RACE):
                # PostgreSQL: a duplicate pg_type row; the loser finds the tables created on the next try.
                time.sleep(0.2 + random.random() * 0.5 * (attempt + 1))
                continue
            reason = _without_secrets(text.splitlines()[0], url) if text else type(e).__name__
            raise SearchInputError(f"--storage {redacted(url)!r}: {reason}") from None
    raise AssertionError("unreachable")


def this_worker() -> dict[str, Any]:
    """Recorded on every trial, so that a later run on this host can tell whether its worker still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def join_study(study: optuna.Study, identity: dict[str, Any], deployment: Deployment) -> None:
    """Record this worker's identity in a new study, or refuse to join one measured elsewhere."""
    attrs = study.user_attrs
    if "fingerprint" not in attrs:
        study.set_user_attr("search_format", SEARCH_FORMAT)
        study.set_user_attr("environment", bench.environment(deployment.device, deployment.threads))
        study.set_user_attr("created_utc", dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        # One attribute at a time: the fingerprint goes last, so a worker that sees it sees the
        # whole identity (otherwise a second worker starting at once reads a half-written one).
        for key, value in sorted(identity.items(), key=lambda item: item[0] == "fingerprint"):
            study.set_user_attr(key, value)
        attrs = study.user_attrs  # re-read: another worker may have recorded its identity first
    check_identity(study.study_name, attrs, identity)


def share_reference_speed(study: optuna.Study, deployment: Deployment) -> None:
    """Every worker of a study normalises to one reference speed: the first worker records its machine's
    (bench.machine), a joining worker adopts the study's (its fingerprint matches, check_identity says)."""
    recorded = study.user_attrs.get("reference_speed")
    if recorded is None:
        reference = bench.machine.reference_speed(deployment.device, deployment.threads)
        study.set_user_attr("reference_speed", dataclasses.asdict(reference))
        recorded = study.user_attrs["reference_speed"]  # another worker may have recorded its own first
    bench.machine.adopt(bench.machine.ReferenceSpeed(**recorded))


def check_identity(study_name: str, theirs: dict[str, Any], mine: dict[str, Any]) -> None:
    """Raise WorkerMismatchError unless this worker measures on the study's hardware and setting."""
    if theirs.get("fingerprint") != mine["fingerprint"]:
        env = theirs.get("environment") or {}
        where = f" ({env.get('cpu_model', '?')}{', ' + env['gpu_name'] if env.get('gpu_name') else ''})" if env else ""
        raise WorkerMismatchError(
            f"refusing to join study {study_name!r}: it was measured on hardware fingerprint "
            f"{theirs.get('fingerprint')}{where}, this worker is {mine['fingerprint']} "
            f"({bench.environment()['cpu_model']}, device {mine['deployment']['device']}, "
            f"threads {mine['deployment']['threads']}); latencies from different machines must not mix "
            f"(use a new --study)")
    theirs_dep = LEGACY_DEPLOYMENT | (theirs.get("deployment") or {})
    mine_dep = mine["deployment"]
    diffs = [f"--{k.replace('_', '-')} {theirs_dep.get(k)} (study) vs {mine_dep[k]} (this worker)"
             for k in mine_dep if theirs_dep.get(k) != mine_dep[k]]
    if diffs:
        raise WorkerMismatchError(f"refusing to join study {study_name!r}: deployment setting differs: "
                                  f"{'; '.join(diffs)} (use the study's setting or a new --study)")
    # A study from before --sampler existed was sampled by TPE.
    theirs = {"sampler": "tpe"} | theirs
    for key, flag in (("budget_ms", "--budget-ms"), ("objective", "--objective"), ("pareto", "--pareto"),
                      ("sampler", "--sampler")):
        if key in mine and theirs.get(key) != mine[key]:
            raise WorkerMismatchError(f"refusing to join study {study_name!r}: it was created with {flag} "
                                      f"{theirs.get(key)}, this run asks for {mine[key]} (use a new --study)")
    if theirs.get("space") != mine["space"]:
        raise WorkerMismatchError(f"refusing to join study {study_name!r}: its search space differs from this "
                                  f"run's (--space / --space-set); use the same space or a new --study")


def worker_ordinal(study: optuna.Study) -> int:
    """How many workers joined this study before this one (0 for the first), from one user attr
    per worker; two workers joining at once both see both attrs and order them the same way."""
    me = f"worker:{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    study.set_user_attr(me, time.time_ns())
    joined = sorted((v, k) for k, v in study.user_attrs.items() if k.startswith("worker:"))
    return [k for _, k in joined].index(me)


def recover_lost_trials(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Fail this host's trials whose worker died (SIGKILL, power loss) and queue their params again,
    so a resumed study loses no proposal. Trials of live workers, or of other hosts, are left alone
    (an RDB storage's heartbeat handles those)."""
    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    records = [(t, TrialRecord.of(t)) for t in trials]
    retried = {record.retry_of for _, record in records}
    for t, record in records:
        worker = record.worker or {}
        dead = worker.get("host") == host and not psutil.pid_exists(worker.get("pid", -1))
        if t.state == TrialState.RUNNING and dead:
            TrialRecord(lost=True).write_to(storage, t._trial_id)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            lost = True
        else:
            lost = t.state == TrialState.FAIL and record.interrupted
        if lost and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs=TrialRecord(retry_of=t.number).to_attrs())
            retried.add(t.number)


__all__ = ["SEARCH_FORMAT", "STORAGE_ENV", "check_identity", "join_study", "make_storage", "recover_lost_trials",
           "redacted", "this_worker", "worker_ordinal"]
