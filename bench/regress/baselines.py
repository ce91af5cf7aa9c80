"""Committed baselines, one per suite and machine: results/baselines/<suite>/<machine fingerprint>.json,
written by `make regress-update` (or `python -m bench regress --suite FILE --update`)."""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.env import environment, fingerprint
from bench.kit import results_root
from bench.machine import reference_speed
from bench.regress.statistics import checked_sample
from bench.regress.rows import DEFAULT_PAIRS, METHOD, Row, definition, repo_relative
from bench.regress.suite_file import GateConfig, Suite
from bench.regress.worker import DETERMINISTIC
from bench.regress.sides import Round, Side
from bench.targets import BenchInputError

SCHEMA = "container-bench-regress/1"
BASELINE_DIR = results_root() / "baselines"
_HINT = ("create it on this kind of machine with `python -m bench regress --suite FILE --update` (`make "
         "regress-update` for the default suite) and commit it, or compare with another revision in the same job: "
         "`--against REV`")


def baseline_path(suite: Suite) -> Path:
    return BASELINE_DIR / suite.name / f"{fingerprint('cpu', suite.threads)}.json"


# The calibration workload cancels a machine's drift within one state of the machine, not across states: on
# the 2-core EPYC VM the stored default baseline of 2026-12-02 13:49 was measured with the calibration at
# 15.3 ms (median; the machine 1.3x slower than at 17:08, 11.9 ms), where the reference rows had slowed with
# it (1.29-1.34x) but the fast path's oneDNN rows only 1.21x, so their normalised figures were 10-12% low and
# conv@320x14 b4 fast read as +11-14% slower in every later run. A baseline is therefore compared only with a
# run whose calibration is within this fraction of the baseline's; otherwise the gate measures the previous
# revision interleaved in the same job (--fallback-against), which shares the state whatever it is.
MACHINE_STATE_TOLERANCE = 0.10


def machine_state_gap(doc: dict[str, Any], current: Side) -> float:
    """The current run's calibration time over the baseline's, less 1 (+0.3: the machine runs 1.3x slower now);
    nan where either has no calibration times."""
    stored = [c for row in doc["rows"].values() for c in (row.get("calibration_ms") or [])]
    now = current.calibration_times_ms()
    if not stored or not now:
        return math.nan
    return float(np.median(now) / np.median(stored)) - 1.0


def baseline_document(side: Side, config: GateConfig) -> dict[str, Any]:
    """The baseline file for the config's suite and rows, measured in its rounds on `side`."""
    suite, rows, threads = config.suite, config.rows, config.threads
    reference = reference_speed("cpu", threads)
    calibration = side.calibration_times_ms()
    return {
        "schema": SCHEMA,
        "suite_name": suite.name,
        "fingerprint": fingerprint("cpu", threads),
        "git_commit": side.commit,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": environment("cpu", threads),
        "threads": threads,
        "rounds": config.rounds,
        "pairs": DEFAULT_PAIRS,
        "method": METHOD,
        # The machine's state while it was measured: its calibration against the stored reference speed.
        "reference_calibration_ms": reference.calibration_ms,
        "machine_speed": reference.calibration_ms / float(np.median(calibration)) if calibration else None,
        "suite": [r.spec() for r in rows],
        "rows": {r.name: side.deterministic[r.name] | {
            "normalised": side.normalised(r.name),
            "row_ms": [x.row_ms for x in side.rounds.get(r.name, [])],
            "calibration_ms": [x.calibration_ms for x in side.rounds.get(r.name, [])],
        } for r in rows if r.name in side.deterministic},
    }


def load_baseline(path: Path) -> dict[str, Any]:
    """The stored baseline, or a clear BenchInputError: a missing baseline never passes silently."""
    path = Path(path)
    if not path.exists():
        if path.parent.parent.resolve() != BASELINE_DIR.resolve():
            raise BenchInputError(f"baseline {repo_relative(path)}: missing; {_HINT}")
        others = sorted(p.name for p in path.parent.glob("*.json")) if path.parent.is_dir() else []
        known = f" (baselines there are for other machines: {', '.join(others)})" if others else ""
        raise BenchInputError(f"baseline {repo_relative(path)}: missing for this machine (fingerprint "
                              f"{path.stem}) and suite {path.parent.name!r}{known}; {_HINT}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BenchInputError(f"baseline {repo_relative(path)}: unreadable ({str(e).splitlines()[0]}); "
                              f"{_HINT}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("rows"), dict):
        raise BenchInputError(f"baseline {repo_relative(path)}: not a {SCHEMA} file; {_HINT}")
    if doc.get("method") != METHOD:
        raise BenchInputError(f"baseline {repo_relative(path)}: made with measuring method {doc.get('method')!r}, "
                              f"this gate uses {METHOD!r}; {_HINT}")
    for name, row in doc["rows"].items():
        if not isinstance(row, dict) or any(k not in row for k in (*DETERMINISTIC, "normalised")):
            raise BenchInputError(f"baseline {repo_relative(path)}: row {name!r} lacks {', '.join(DETERMINISTIC)} "
                                  f"or its normalised times; {_HINT}")
        try:
            checked_sample(row["normalised"], f"row {name!r}")
        except BenchInputError as e:
            raise BenchInputError(f"baseline {repo_relative(path)}: {e}; {_HINT}") from None
    return doc


def changed_rows(doc: dict[str, Any], rows: Sequence[Row], threads: int) -> list[str]:
    """Rows the baseline holds under the same name but measured something else (another batch, runtime,
    shape, config, ...): comparing them would be meaningless."""
    threads = int(doc.get("threads", threads))
    stored = {spec.get("name"): definition(spec, threads) for spec in doc.get("suite", []) if isinstance(spec, dict)}
    return [r.name for r in rows if r.name in doc["rows"] and r.name in stored
            and stored[r.name] != r.definition(threads)]


def baseline_side(doc: dict[str, Any], skip: Sequence[str] = ()) -> Side:
    """The baseline as a measured side, without the rows in `skip` (changed since, see changed_rows)."""
    side = Side("baseline", str(doc.get("git_commit", "unknown")))
    for name, row in doc["rows"].items():
        if name in skip:
            continue
        side.deterministic[name] = {k: row[k] for k in DETERMINISTIC}
        calibration = row.get("calibration_ms") or [math.nan] * len(row["normalised"])
        row_ms = row.get("row_ms") or [math.nan] * len(row["normalised"])
        side.rounds[name] = [Round(normalised=n, row_ms=t, calibration_ms=c)
                             for n, c, t in zip(row["normalised"], calibration, row_ms)]
    return side
