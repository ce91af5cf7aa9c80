"""The command-line kit shared by bench and search, the results root, and the shared text helpers.

Bad input on either command line is one line on stderr naming the flag, exit status 2, no traceback:
checked while parsing, so nothing is measured or written first.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bench.cli
import search.__main__
from bench import kit
from bench.formatting import fixed, markdown_table, number, si
from bench.kit import RESULTS_ENV, results_root
from bench.runtimes import RUNTIMES
from container import NetworkConfig, StageConfig

REPO = Path(__file__).resolve().parents[1]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text and "usage:" not in text
    return lines[0]


def exit_code(main, argv: list[str]) -> int:
    """What `sys.exit(main(argv))` would exit with, whether main returns or argparse exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def a_file(tmp_path) -> Path:
    """A regular file: a path below it can never be created, even by root (whom permission bits do not stop)."""
    path = tmp_path / "file"
    path.write_text("")
    return path


# --- bad input: one line naming the flag, exit 2 ------------------------------------------------------------

BENCH_BAD = [
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--batch-sizes=-1,a"], "--batch-sizes"),
    (["--batch-sizes", "-1,a"], "--batch-sizes"),
    (["--batch-sizes", "1,x"], "--batch-sizes"),
    (["--batch-sizes", ","], "--batch-sizes"),
    (["--threads", "0"], "--threads"),
    (["run", "--threads", "-2"], "--threads"),
    (["--kinds", "mix,transformer"], "--kinds"),
    (["--networks", "resnet50"], "--networks"),
    (["affinity", "--dim", "0"], "--dim"),
    (["affinity", "--query", "3"], "--query"),
    (["affinity", "--kind", "transformer"], "--kind"),
    (["--suite", "nightly"], "--suite"),
    (["--suite", "runtimes", "--runtime", "fast", "--batch-sizes", "4"], "--batch-sizes"),
    (["--runtime", "openvino", "--compile"], "--compile"),
    (["--runtime", "openvino", "--mode", "train"], "--mode"),
    (["--runtime", "onnxruntime", "--dtype", "bf16"], "--dtype"),
]


@pytest.mark.parametrize("argv,flag", BENCH_BAD)
def test_bench_rejects_bad_values_in_one_line_naming_the_flag(argv, flag, capsys):
    assert exit_code(bench.cli.main, argv) == 2
    assert flag in one_line(capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--runtime", "--impl"])
def test_an_unknown_runtime_is_one_line_listing_the_valid_ones(flag, capsys):
    assert exit_code(bench.cli.main, [flag, "fast,tensorrt", "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "tensorrt" in line and all(runtime in line for runtime in RUNTIMES)


def test_a_runtime_whose_package_is_missing_names_the_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` fails, as where it is not installed
    assert exit_code(bench.cli.main, ["--runtime", "reference,openvino", "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--runtime openvino" in line and "'openvino'" in line and "pip install openvino" in line


@pytest.mark.parametrize("argv,runtimes", [
    ([], ["reference"]),
    (["--impl", "fast,openvino"], ["fast", "openvino"]),
    (["--runtime", "onnxruntime,fast,onnxruntime"], ["onnxruntime", "fast"]),
    (["--suite", "runtimes"], list(RUNTIMES)),  # make bench-runtimes: every runtime unless told
])
def test_the_runtimes_a_run_measures(argv, runtimes, monkeypatch):
    """--impl is an alias of --runtime; each runtime listed runs once, on every job of the suite."""
    suites = []
    monkeypatch.setattr(bench.cli, "run_suite", lambda jobs, out_dir, **kwargs: suites.append(jobs))
    assert bench.cli.main([*argv, "--quick", "--kinds", "conv", "--networks", "container_light"]) == 0
    [jobs] = suites
    assert list(dict.fromkeys(j.options.runtime for j in jobs)) == runtimes
    assert len(jobs) == 2 * len(runtimes)  # conv@512x7 and container_light, on each runtime


@pytest.mark.parametrize("command,flag", [([], "--out"), (["affinity"], "--out")])
def test_bench_rejects_an_output_path_it_cannot_write(command, flag, a_file, capsys):
    assert exit_code(bench.cli.main, [*command, flag, str(a_file / "sub" / "out.png")]) == 2
    line = one_line(capsys.readouterr().err)
    assert flag in line and "not a directory" in line


@pytest.mark.parametrize("argv,flag", [
    (["--budget-ms", "5", "--results-dir", "{file}/results"], "--results-dir"),
    (["--budget-ms", "5", "--lock-file", "{file}/lock"], "--lock-file"),
    (["--budget-ms", "5", "--recheck-margin", "1"], "--recheck-margin"),
    (["--budget-ms", "5", "--predictor-margin", "-0.1"], "--predictor-margin"),
    (["predictor-report", "--out-dir", "{file}/x"], "--out-dir"),
    (["predictor-bench", "--budget-ms", "5", "--out-dir", "{file}/x"], "--out-dir"),
    (["validate-proxy", "--out-dir", "{file}/x"], "--out-dir"),
])
def test_search_rejects_bad_values_in_one_line_naming_the_flag(argv, flag, a_file, capsys):
    argv = [a.format(file=a_file) for a in argv]
    assert exit_code(search.__main__.main, argv) == 2
    assert flag in one_line(capsys.readouterr().err)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
@pytest.mark.parametrize("argv", [["bench", "--out", "/proc/x"],
                                  ["search", "--budget-ms", "5", "--results-dir", "/proc/x"]])
def test_an_unwritable_output_directory_from_the_shell(argv, tmp_path):
    """/proc refuses new entries even to root: it used to end in a FileNotFoundError traceback."""
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert argv[-2] in line and "/proc" in line
    assert not list(tmp_path.iterdir())


# --- checked types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parse,text,value", [
    (kit.positive_int, "3", 3), (kit.non_negative_int, "0", 0), (kit.positive_float, "0.5", 0.5),
    (kit.non_negative_float, "0", 0.0), (kit.fraction, "0.25", 0.25), (kit.positive_ints, "1, 8,", [1, 8]),
    (kit.names, "fp32,bf16", ["fp32", "bf16"]),
])
def test_checked_types_accept_good_values(parse, text, value):
    assert parse(text) == value


@pytest.mark.parametrize("parse,text", [
    (kit.positive_int, "0"), (kit.positive_int, "1.5"), (kit.non_negative_int, "-1"),
    (kit.positive_float, "inf"), (kit.positive_float, "nan"), (kit.non_negative_float, "-0.1"),
    (kit.fraction, "1"), (kit.positive_ints, "1,0"), (kit.positive_ints, ""), (kit.names, ", ,"),
])
def test_checked_types_reject_bad_values(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_writable_dir_accepts_a_new_nested_directory_and_leaves_nothing_behind(tmp_path):
    assert kit.writable_dir(str(tmp_path / "a" / "b")) == tmp_path / "a" / "b"
    assert kit.writable_file(str(tmp_path / "c" / "figure.png")) == tmp_path / "c" / "figure.png"
    assert not list(tmp_path.iterdir())


def test_writable_file_refuses_a_directory(tmp_path):
    with pytest.raises(argparse.ArgumentTypeError, match="is a directory"):
        kit.writable_file(str(tmp_path))


# --- help and entry points ----------------------------------------------------------------------------------


def test_bench_top_level_help_shows_the_run_options_and_lists_the_commands(capsys):
    assert exit_code(bench.cli.main, ["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--suite", "--quick", "--device", "--dtype", "--channels-last", "--compile", "--mode", "--runtime",
                 "--impl", "--kinds", "--networks", "--batch-sizes", "--threads", "--no-rss", "--out", "--no-progress"):
        assert flag in out
    for command in ("affinity", "regress", "history"):
        assert f"\n  {command} " in out


def test_search_help_lists_the_commands(capsys):
    assert exit_code(search.__main__.main, ["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("predictor-report", "predictor-bench", "validate-proxy", "compare", "compare-random", "repeat"):
        assert f"\n  {command} " in out


@pytest.mark.parametrize("script,argv,flag", [("container-bench", ["--threads", "0"], "--threads"),
                                              ("container-search", ["--trials", "0"], "--trials")])
def test_console_scripts_return_the_exit_code(script, argv, flag):
    path = Path(sys.executable).parent / script
    if not path.exists():
        pytest.skip(f"{script}: the project is not installed in this environment (pip install -e .)")
    proc = subprocess.run([str(path), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith(f"{script}: error:") and flag in line


# --- one results root ----------------------------------------------------------------------------------------


def test_results_root_is_the_checkout_unless_the_environment_names_one(monkeypatch, tmp_path):
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    assert results_root() == REPO / "results"
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "elsewhere"))
    assert results_root() == tmp_path / "elsewhere"


def test_default_output_paths_derive_from_the_results_root(monkeypatch, tmp_path):
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path))
    assert bench.cli.build_parser("affinity").parse_args([]).out == tmp_path / "affinity.png"


def test_a_command_run_from_another_directory_writes_under_the_root(tmp_path):
    root, cwd = tmp_path / "root", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, RESULTS_ENV: str(root)}
    proc = subprocess.run([sys.executable, "-m", "bench", "affinity", "--dim", "32", "--side", "4"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert (root / "affinity.png").is_file()
    assert not list(cwd.iterdir())


# --- shared text helpers ------------------------------------------------------------------------------------


def test_numbers_print_the_same_way_everywhere():
    assert [si(2.5e6), si(1.31e9), si(812), si(12345, digits=4), si(None), si(float("nan"))] == \
        ["2.5M", "1.31G", "812", "12.35k", "-", "-"]
    assert [number(3), number(0.1234567), number(True), number(pd.NA)] == ["3", "0.1235", "yes", "-"]
    assert [fixed(12.345), fixed(None)] == ["12.35", "-"]


def test_markdown_table_aligns_numbers_right_and_prints_missing_values_as_a_dash():
    table = markdown_table(pd.DataFrame({"rank": [1, 2], "ms": [1.5, None], "architecture": ["a", "b"]}))
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["rank", "ms", "architecture"]
    assert re.fullmatch(r"\|-+:\|-+:\|:-+\|", lines[1])  # right, right, left
    assert lines[3].split("|")[2].strip() == "-"
    with pytest.raises(ValueError, match="one letter per column"):
        markdown_table(pd.DataFrame({"a": [1]}), align="rl")


def test_a_config_describes_itself_in_one_line():
    config = NetworkConfig(stages=(StageConfig(depth=2, dim=64, heads=2, kind="conv"),
                                   StageConfig(depth=3, dim=128, heads=4, kind="mix", kernel_size=3, mlp_ratio=2.0)),
                           image_size=32)
    assert config.describe() == "2x64/2h conv k5 r4; 3x128/4h mix k3 r2"
    assert config.describe_short() == "d2-3 w64-128 conv-mix"
