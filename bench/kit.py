"""The command-line and file helpers that bench, search and the gate share.

Command lines: one parser style and checked argument types. An error on the command line is one line
naming the flag, with exit status 2, never a usage dump: `python -m bench: error: argument --batch-sizes:
0 must be >= 1`. Numbers, lists and output paths are checked while parsing, so a bad value fails before
anything is measured or written.

Files: one results root for every command, whatever the working directory (`results_root`), and atomic
writers: a run killed half-way leaves no half-written file and earlier files intact. `read_document`
reads a JSON or YAML input file (a config, a search space, a suite), raising BenchInputError with one
line that names the file. Terminal tables: `table_console` and `print_frame`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NoReturn, TypeVar

import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.env import REPO_ROOT
from bench.formatting import MISSING, is_missing
# Defined beside BenchInputError, which it raises: bench.targets reads config files with it, so its
# importing bench.kit would close an import cycle. The redundant alias marks the re-export.
from bench.targets import BenchInputError
from bench.targets import read_document as read_document

T = TypeVar("T")

EXIT_BAD_INPUT = 2
RESULTS_ENV = "CONTAINER_BENCH_RESULTS"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs keep their line breaks; an option's help ends with its default,
    unless the help already states it or there is none to state (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or not action.option_strings):
            return action.help
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line naming the flag, with exit status 2."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:  # one line, not usage + message
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def program_name(package: str) -> str:
    """The name a user typed: a console script (`container-bench`) or `python -m <package>`."""
    invoked = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("container-") else f"python -m {package}"


def fail(tool: str, message: str, code: int = EXIT_BAD_INPUT) -> int:
    """Print `tool: error: message` (its first line only) on stderr and return the exit code."""
    first = str(message).strip().splitlines()[0] if str(message).strip() else "failed"
    print(f"{tool}: error: {first}", file=sys.stderr)
    return code


# --- checked numbers --------------------------------------------------------------------------------------


def _checked(convert: Callable[[str], T], noun: str, ok: Callable[[T], bool], requirement: str) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text} must be {requirement}")
        return value
    parse.__name__ = f"{noun} {requirement}"
    return parse


positive_int = _checked(int, "an integer", lambda v: v >= 1, ">= 1")
non_negative_int = _checked(int, "an integer", lambda v: v >= 0, ">= 0")
positive_float = _checked(float, "a number", lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative_float = _checked(float, "a number", lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
fraction = _checked(float, "a number", lambda v: 0 <= v < 1, "a fraction in [0, 1)")


# --- lists --------------------------------------------------------------------------------------------------


def argument_type(convert: Callable[[str], T]) -> Callable[[str], T]:
    """A library parser (raising BenchInputError) as an argparse type: its message follows the flag's name."""
    def parse(text: str) -> T:
        try:
            return convert(text)
        except BenchInputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = convert.__name__
    return parse


def split_commas(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def comma_list(item: Callable[[str], T]) -> Callable[[str], list[T]]:
    """A comma-separated list whose every item passes `item`, e.g. `--batch-sizes 1,8`; never empty."""
    def parse(text: str) -> list[T]:
        items = split_commas(text)
        if not items:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list")
        return [item(t) for t in items]  # an item's ArgumentTypeError names the bad item
    return parse


def choice_list(choices: Iterable[str], what: str) -> Callable[[str], list[str]]:
    """A comma-separated list of names from `choices`; an unknown one is named with the valid ones."""
    valid = tuple(choices)

    def choose(name: str) -> str:
        if name not in valid:
            raise argparse.ArgumentTypeError(f"{name!r}: unknown {what}; valid {what}s: {', '.join(valid)}")
        return name
    return comma_list(choose)


names = comma_list(str)
positive_ints = comma_list(positive_int)


# --- output paths -----------------------------------------------------------------------------------------


def _probe_writable(directory: Path) -> None:
    """Create and remove a directory inside `directory`: the only check that also holds for root,
    read-only mounts and pseudo file systems such as /proc, where permission bits say yes."""
    probe = tempfile.mkdtemp(prefix=".write-probe-", dir=directory)
    os.rmdir(probe)


def _check_writable(text: str, directory: Path) -> None:
    """`directory` exists or can be created and written to; else an error naming `text`."""
    ancestor = next(p for p in (directory, *directory.parents) if p.exists())  # "/" always exists
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {ancestor} is not a directory")
    try:
        _probe_writable(ancestor)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot write in {ancestor} ({e.strerror or e})") from None


def writable_dir(text: str) -> Path:
    """A directory that exists or can be created, and can be written to. Nothing is left behind."""
    path = Path(text).expanduser()
    _check_writable(text, path.absolute())
    return path


def writable_file(text: str) -> Path:
    """A file path whose directory exists or can be created, and can be written to."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory, expected a file name")
    _check_writable(text, path.absolute().parent)
    return path


# --- results and files ----------------------------------------------------------------------------------


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


# --- terminal tables --------------------------------------------------------------------------------------


def table_console(**kwargs) -> Console:
    """A console for wide tables: the terminal's width, or 160 columns where output is piped (CI logs),
    where rich would otherwise squeeze every table into 80."""
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=160, **kwargs)


def print_frame(frame: pd.DataFrame, title: str, console: Console) -> None:
    table = Table(title=title)
    for name in frame.columns:
        table.add_column(str(name), justify="right" if pd.api.types.is_numeric_dtype(frame[name]) else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(MISSING if is_missing(v) else str(v) for v in row))
    console.print(table)


__all__ = ["EXIT_BAD_INPUT", "RESULTS_ENV", "HelpFormatter", "Parser", "atomic_path", "choice_list", "comma_list",
           "fail", "fraction", "names", "non_negative_float", "non_negative_int", "positive_float", "positive_int",
           "positive_ints", "print_frame", "program_name", "read_document", "results_root", "save_figure",
           "split_commas", "table_console", "writable_dir", "writable_file", "write_json", "write_table",
           "write_text"]
