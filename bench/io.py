"""Where results go and how they are written, and how input documents are read.

One results root for every command, whatever the working directory (`results_root`), and atomic
writers: a run killed half-way leaves no half-written file and earlier files intact.
`read_document` reads a JSON or YAML input file (a config, a search space, a suite), raising
bench.targets.BenchInputError with one line that names the file.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from bench.env import REPO_ROOT
# Defined beside BenchInputError, which it raises: bench.targets reads config files with it, so its
# importing bench.io would close an import cycle. The redundant alias marks the re-export.
from bench.targets import read_document as read_document

RESULTS_ENV = "CONTAINER_BENCH_RESULTS"


def results_root() -> Path:
    """$CONTAINER_BENCH_RESULTS if set; else results/ of the source checkout these packages are installed
    from (an editable install, the usual case); else ./results of the working directory."""
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser().absolute()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "results"
    return Path.cwd() / "results"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_table(frame: pd.DataFrame, csv_path: str | os.PathLike, json_path: str | os.PathLike | None = None) -> None:
    """The same rows and columns as CSV and (optionally) JSON records."""
    with atomic_path(csv_path) as tmp:
        frame.to_csv(tmp, index=False)
    if json_path is not None:
        with atomic_path(json_path) as tmp:
            frame.to_json(tmp, orient="records", indent=2)


def save_figure(fig, path: str | os.PathLike, **kwargs: Any) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return Path(path)
