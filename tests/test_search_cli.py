"""`python -m search`: bad input, an impossible budget, a kill and a resume, a refused worker."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from search.__main__ import main
from search.storage import make_storage

from tests.search_helpers import TINY_SPACE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(TINY_SPACE))
    return path


def common(tmp_path: Path, space_file: Path, *extra: str) -> list[str]:
    return ["--space", str(space_file), "--image-size", "32", "--threads", "1", "--results-dir",
            str(tmp_path / "results"), "--stop-max-s", "0.05", "--stop-min-s", "0", "--stop-min-runs", "3",
            "--proxy-inits", "1", "--proxy-batch", "2", "--no-progress", "--lock-file", str(tmp_path / "lock"),
            "--no-predictor", *extra]


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "abc", "NaN", "1e400"])
def test_bad_budget_exits_2_with_one_line(budget, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["--budget-ms", budget]))
    assert info.value.code == 2
    assert "--budget-ms" in one_line(capsys.readouterr().err)


def test_bad_budget_from_the_shell():
    proc = subprocess.run([sys.executable, "-m", "search", "--budget-ms", "abc"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("search: error: --budget-ms 'abc': not a number "
                                     "(give milliseconds, e.g. --budget-ms 25)")
    assert proc.stdout == ""


@pytest.mark.parametrize("argv", [["--trials", "0"], ["--batch-size", "x"], ["--objective", "accuracy"],
                                  ["--space-set", "stages[9].depth=2"], ["--dtype", "fp8"]])
def test_other_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(main(["--budget-ms", "10", *argv]))
    assert info.value.code == 2
    one_line(capsys.readouterr().err)


@pytest.mark.parametrize("argv,flag", [
    (["--budget-ms", "10", "--stop-min-s", "-1"], "--stop-min-s"),
    (["predictor-bench", "--budget-ms", "-1"], "--budget-ms"),
    (["predictor-bench", "--budget-ms", "5", "--seconds", "inf"], "--seconds"),
    (["predictor-report", "--samples", "0"], "--samples"),
    (["predictor-report", "--fit", "2"], "--fit"),
    (["validate-proxy", "--archs", "x"], "--archs"),
    (["validate-proxy", "--lr", "0"], "--lr"),
    (["--budget-ms", "10", "--runtime", "tensorrt"], "--runtime"),
    (["--budget-ms", "10", "--impl", "tensorrt"], "--runtime"),
    (["predictor-report", "--runtime", "tensorrt"], "--runtime"),
    (["predictor-bench", "--budget-ms", "5", "--runtime", "tensorrt"], "--runtime"),
])
def test_every_command_rejects_bad_numbers_in_one_line_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(main(argv))
    assert info.value.code == 2
    assert flag in one_line(capsys.readouterr().err)


def test_unknown_runtime_from_the_shell_lists_the_valid_ones():
    proc = subprocess.run([sys.executable, "-m", "search", "--budget-ms", "10", "--runtime", "tensorrt"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("search: error: --runtime") and all(
        name in line for name in ("reference", "fast", "onnxruntime", "openvino"))


def test_missing_runtime_package_is_named(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the package were not installed
    assert main(["--budget-ms", "10", "--runtime", "openvino"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--runtime openvino" in line and "'openvino'" in line


def test_runtime_flag_and_its_impl_alias(tmp_path, space_file, capsys):
    """The default runtime is fast; --impl is --runtime under its old name. Each is the study's runtime."""
    args = ["--budget-ms", "1e6", "--trials", "1", "--objective", "params", "--recheck", "0"]
    assert main([*args, "--study", "d", *common(tmp_path, space_file)]) == 0
    assert main([*args, "--study", "r", "--impl", "reference", *common(tmp_path, space_file)]) == 0
    assert _load(tmp_path, "d").user_attrs["deployment"]["runtime"] == "fast"
    assert _load(tmp_path, "r").user_attrs["deployment"]["runtime"] == "reference"
    capsys.readouterr()
    assert main([*args, "--study", "r", "--runtime", "fast", *common(tmp_path, space_file)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "refusing to join study 'r'" in line and "--runtime reference (study) vs fast (this worker)" in line


def test_space_file_with_impossible_range_names_the_field(tmp_path, capsys):
    data = json.loads(json.dumps(TINY_SPACE))
    data["stages"][1]["depth"] = [4, 2]
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    assert main(["--budget-ms", "10", "--space", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "space.stages[1].depth=[4, 2]" in line and "min 4 > max 2" in line


def test_budget_below_the_smallest_network(tmp_path, space_file, capsys):
    code = main(["--budget-ms", "1e-6", "--study", "tiny", *common(tmp_path, space_file)])
    assert code == 3
    line = one_line(capsys.readouterr().err)
    assert "below the smallest network" in line and " ms (median" in line
    assert not (tmp_path / "results" / "tiny").exists()


def _load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(None, tmp_path / "results" / name))


def test_resume_after_kill_loses_no_trial(tmp_path, space_file):
    argv = [sys.executable, "-m", "search", "--budget-ms", "1e6", "--study", "k", "--trials", "200",
            "--objective", "naswot", *common(tmp_path, space_file)]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    journal = tmp_path / "results" / "k" / "study.journal"
    deadline = time.time() + 600  # an upper bound only: the loop ends at the third complete trial
    complete = 0
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not journal.exists():
                continue
            try:
                trials = _load(tmp_path, "k").get_trials()
            except Exception:  # the study may not be fully written yet
                continue
            complete = sum(t.state.name == "COMPLETE" for t in trials)
            if complete >= 3:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert complete >= 3, proc.stderr.read() if proc.stderr else ""
    before = _load(tmp_path, "k").get_trials()
    target = sum(t.state.name == "COMPLETE" for t in before) + 2

    # Resume (in this process: a different worker on the same machine) to a target of two more trials.
    assert main(["--budget-ms", "1e6", "--study", "k", "--trials", str(target), "--objective", "naswot",
                 *common(tmp_path, space_file)]) == 0
    after = _load(tmp_path, "k").get_trials()
    assert [t.number for t in after] == list(range(len(after)))
    assert not any(t.state.name in ("RUNNING", "WAITING") for t in after)
    assert sum(t.state.name == "COMPLETE" for t in after) == target
    for old in before:  # finished trials are untouched; a trial the kill cut short is failed and retried once
        now = after[old.number]
        if old.state.name == "RUNNING":
            assert now.state.name == "FAIL" and now.user_attrs.get("lost")
            if old.params:
                retries = [t for t in after if t.user_attrs.get("retry_of") == old.number]
                # killed mid-suggest: the retry's parameters start with the lost trial's
                assert len(retries) == 1 and old.params.items() <= retries[0].params.items()
        else:
            assert now.state == old.state and now.values == old.values
    assert (tmp_path / "results" / "k" / "ranking.csv").exists()


def test_worker_with_other_settings_is_refused(tmp_path, space_file, capsys):
    args = ["--budget-ms", "1e6", "--study", "w", "--trials", "2", "--objective", "params"]
    assert main([*args, *common(tmp_path, space_file)]) == 0
    capsys.readouterr()
    # Two threads instead of one: a different hardware fingerprint for the same study.
    other = common(tmp_path, space_file)
    other[other.index("--threads") + 1] = "2"
    assert main([*args, *other]) == 2
    line = one_line(capsys.readouterr().err)
    assert "refusing to join study 'w'" in line and "fingerprint" in line
    assert len(_load(tmp_path, "w").get_trials()) == 2


def test_missing_budget_exits_2(capsys):
    assert main([]) == 2
    assert "--budget-ms: required" in one_line(capsys.readouterr().err)


def test_print_space_round_trips(tmp_path, capsys):
    from search import SearchSpace

    assert main(["--print-space", "--space-set", "stages[3].kind=[conv,attn]"]) == 0
    path = tmp_path / "space.yaml"
    path.write_text(capsys.readouterr().out)
    assert SearchSpace.load(path).stages[3].kind == ("conv", "attn")
