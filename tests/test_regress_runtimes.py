"""The regression gate on the runtimes: the suite's rows on the reference and on the fast path (names that
baselines made before runtimes still match), the baseline `make regress-update` writes for it, --runtime /
--impl and its bad input, the worker building rows on their runtime in older and newer trees, and the gate
flagging a slower fast path in a copy of this tree while the reference rows pass."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from rich.console import Console

import container
from bench import BenchInputError, regress
from bench import cli as bench_cli
from bench.env import REPO_ROOT, fingerprint
from bench.kit import RESULTS_ENV


def test_the_default_suite_gates_the_fast_path_and_keeps_the_reference_rows_names():
    suite = regress.load_suite()
    assert suite.name == "default" and suite.path == regress.DEFAULT_SUITE_FILE and suite.threads == 1
    rows = suite.rows
    fast = [r for r in rows if r.runtime == "fast"]
    assert [r.name for r in fast] == ["mix@320x14 b4 fast", "conv@320x14 b4 fast", "container_light b1 fast"]
    assert all(r.spec()["runtime"] == "fast" for r in fast)
    reference = [r for r in rows if r.runtime == "reference"]
    assert {r.kind for r in reference if r.kind} == set(container.BLOCK_KINDS)
    # Reference rows keep the names they had before runtimes, so baselines written then still match them.
    assert {r.name for r in reference} == {f"{k}@320x14 b4" for k in container.BLOCK_KINDS} | {"container_light b1"}


def test_the_default_suite_s_baseline_lies_under_the_results_root_by_suite_and_machine(tmp_path):
    # In a fresh process: the baseline folder follows $CONTAINER_BENCH_RESULTS, read when bench.regress is imported.
    code = "from bench import regress; print(regress.baseline_path(regress.load_suite()))"
    done = subprocess.run([sys.executable, "-c", code], env=os.environ | {RESULTS_ENV: str(tmp_path)}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "baselines" / "default" / f"{fingerprint('cpu', 1)}.json")


def _measured(rows):
    """A side as measure_sides returns it: every row built and timed in 16 rounds."""
    side = regress.Side("current", "abc1234")
    for i, row in enumerate(rows):
        side.deterministic[row.name] = {"params": 1000 + i, "macs_fvcore": 50_000, "cpu_alloc_peak_bytes": 4096}
        side.rounds[row.name] = [regress.Round(normalised=1.0 + i + 0.01 * k, row_ms=10.0 + k, calibration_ms=5.0)
                                 for k in range(regress.DEFAULT_UPDATE_ROUNDS)]
    return side


def test_the_baseline_written_for_the_default_suite_covers_every_row_with_its_definition(tmp_path, monkeypatch):
    """What `make regress-update` writes (update_baseline, its measurement stood in for) is what the next gate run
    reads back: every row of the suite, fast path included, with the definition the suite gives it, so that no row
    is reported new or changed."""
    suite = regress.load_suite()
    monkeypatch.setattr(regress.baselines, "BASELINE_DIR", tmp_path / "baselines")
    measured = []
    monkeypatch.setattr(regress.cli, "measure_sides",
                        lambda trees, config: measured.append(config) or {"current": _measured(config.rows)})
    config = regress.GateConfig(suite, rounds=regress.DEFAULT_UPDATE_ROUNDS, history=tmp_path / "history.jsonl")
    path = regress.update_baseline(config)
    assert measured == [config] and path == regress.baseline_path(suite)
    assert path == tmp_path / "baselines" / "default" / f"{fingerprint('cpu', suite.threads)}.json"
    stored = regress.load_baseline(path)
    assert (stored["suite_name"], stored["threads"], stored["rounds"]) == ("default", 1, regress.DEFAULT_UPDATE_ROUNDS)
    assert stored["fingerprint"] == fingerprint("cpu", 1) and stored["git_commit"] == "abc1234"
    assert list(stored["rows"]) == [r.name for r in suite.rows]  # the baseline covers the whole suite ...
    assert [spec["name"] for spec in stored["suite"]] == [r.name for r in suite.rows]
    assert regress.changed_rows(stored, suite.rows, suite.threads) == []  # ... with the same definitions
    back = regress.baseline_side(stored)
    assert back.normalised("conv@320x14 b4 fast") == _measured(suite.rows).normalised("conv@320x14 b4 fast")
    # the same name with another definition (batch, runtime) is caught, not compared
    moved = [dataclasses.replace(r, batch=8) if r.name == "mix@320x14 b4 fast" else r for r in suite.rows]
    assert regress.changed_rows(stored, moved, suite.threads) == ["mix@320x14 b4 fast"]
    swapped = [dataclasses.replace(r, runtime="fast") if r.name == "conv@320x14 b4" else r for r in suite.rows]
    assert regress.changed_rows(stored, swapped, suite.threads) == ["conv@320x14 b4"]
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [(h["row"], h["mode"], h["suite"]) for h in history] == [(r.name, "update", "default") for r in suite.rows]


def test_runtime_runs_every_row_of_the_suite_on_the_runtimes_named():
    rows = regress.load_suite().rows
    fast = regress.on_runtimes(rows, ["fast"])
    assert len(fast) == len(container.BLOCK_KINDS) + 1 and {r.runtime for r in fast} == {"fast"}
    assert [r.name for r in regress.select_rows(regress.on_runtimes(rows, ["reference", "openvino"]), ["attn"])] == [
        "attn@320x14 b4", "attn@320x14 b4 openvino"]
    with pytest.raises(BenchInputError, match="--rows 'nonsense'"):
        regress.select_rows(fast, ["nonsense"])


def _bench_main(*argv):
    with pytest.raises(SystemExit) as exit_info:
        code = bench_cli.main(["regress", *argv])
        raise SystemExit(code)
    return exit_info.value.code


def test_an_unknown_runtime_lists_the_valid_ones(capsys):
    for flag in ("--runtime", "--impl"):
        assert _bench_main(flag, "reference,nonsense", "--no-history") == 2
        err = capsys.readouterr().err.strip()
        assert "nonsense" in err and "reference, fast, onnxruntime, openvino" in err
        assert "\n" not in err and "Traceback" not in err


def test_a_runtime_whose_package_is_missing_names_the_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    assert _bench_main("--runtime", "fast,openvino", "--no-history") == 2
    err = capsys.readouterr().err.strip()
    assert "'openvino'" in err and "pip install openvino" in err and "\n" not in err


# Stand-ins for the Options of other revisions: an older tree has Options(impl=...) with reference and
# fast only; a newer one has Options(runtime=...), and its profile reports a runtime whose output does
# not match the reference module's as status "mismatch".
STAND_IN_OPTIONS = {
    "impl": textwrap.dedent("""
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Options:
            impl: str = "reference"
            threads: int = None
            stop: object = None

            @property
            def runtime(self):
                return self.impl
    """),
    "runtime": textwrap.dedent("""
        from dataclasses import dataclass

        @dataclass(frozen=True)
        class Options:
            runtime: str = "reference"
            threads: int = None
            stop: object = None
    """),
}
STAND_IN_RUNTIME_BENCH = textwrap.dedent("""
    from types import SimpleNamespace

    PARAMS = {"reference": 7, "fast": 8, "onnxruntime": 9}


    class StopRule:
        def __init__(self, **kwargs):
            pass


    class BlockTarget:
        def __init__(self, kind, dim, side):
            pass


    class NetworkTarget:
        pass


    def profile(target, batch, options, flops=True, memory=True):
        row = {"params": PARAMS.get(options.runtime, 0), "macs_fvcore": 11, "cpu_alloc_peak_bytes": None,
               "status": "ok", "status_reason": ""}
        if options.runtime == "openvino":
            row |= {"status": "mismatch", "status_reason": "max relative error 0.5 > 0.0001"}
        return SimpleNamespace(row=lambda: row)


    def build_workload(target, batch, options):
        return SimpleNamespace(step=lambda: sum(range(2000)))
""")


@pytest.mark.parametrize("field", ["impl", "runtime"])
def test_the_worker_builds_rows_on_their_runtime_in_older_and_newer_trees(tmp_path, field):
    for package, text in (("bench", STAND_IN_OPTIONS[field] + STAND_IN_RUNTIME_BENCH), ("container", "")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(text)
    specs = [{"name": runtime, "target": "block", "kind": "conv", "dim": 8, "side": 4, "batch": 2,
              "runtime": runtime} for runtime in ("reference", "fast", "onnxruntime", "openvino")]
    worker = regress.WorkerProcess(tmp_path, "reference", threads=1, inject=False)
    try:
        setup = worker.request({"cmd": "setup", "rows": specs, "threads": 1})
    finally:
        worker.close()
    built = {name: figures["params"] for name, figures in setup["rows"].items()}
    errors = setup["errors"]
    if field == "impl":  # Options(impl="fast") for the fast path; no other runtime in such a tree
        assert built == {"reference": 7, "fast": 8}
        assert set(errors) == {"onnxruntime", "openvino"}
        assert "no runtime of that name" in errors["openvino"]
    else:
        assert built == {"reference": 7, "fast": 8, "onnxruntime": 9}
        assert list(errors) == ["openvino"] and "status mismatch: max relative error 0.5" in errors["openvino"]
    assert all("\n" not in e for e in errors.values())


# --- the gate on the fast path: a copy of this tree whose container.optimize does redundant work ---------

SLOWER_FAST_PATH = '''

# Added by tests/test_regress.py: every block of the fast inference path computed three times.
_block_infer_once = block_infer


def block_infer(x, k, lowp=None):
    out = _block_infer_once(x, k, lowp)
    for _ in range(2):
        _block_infer_once(x, k, lowp)
    return out
'''


def _copy_tree(to):
    for package in ("bench", "container"):
        shutil.copytree(REPO_ROOT / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    return to


def test_the_gate_flags_a_slower_fast_path_and_passes_the_reference_rows(tmp_path):
    plain = _copy_tree(tmp_path / "plain")
    slowed = _copy_tree(tmp_path / "slowed")
    infer = slowed / "container" / "fast" / "infer.py"
    assert "def block_infer(" in infer.read_text()
    infer.write_text(infer.read_text() + SLOWER_FAST_PATH)
    rows = [regress.Row(f"conv@64x14 b2{suffix}", "block", 2, kind="conv", dim=64, side=14, runtime=runtime)
            for runtime, suffix in (("reference", ""), ("fast", " fast"))]
    # The default 10% effect size holds on a quiet machine; 50% keeps the reference row's verdict sure on a
    # loaded one, and the fast path here got three times slower.
    report = regress.gate_against((slowed, "slowed"), (plain, "plain"), "a copy of this tree",
                                  regress.GateConfig(rows=rows, min_effect=0.5, history=None))
    console = Console(record=True, width=200)
    regress.render(report, console)
    table = console.export_text()
    by_row = {r.row: r for r in report.rows}
    assert [r.row for r in report.regressed] == ["conv@64x14 b2 fast"], table
    fast = by_row["conv@64x14 b2 fast"].verdict
    assert fast is not None and fast.regressed and fast.change > 0.5, table  # three times the work: clearly slower
    assert not by_row["conv@64x14 b2"].changes, table  # same figures: only time changed
    assert "1 of 2 rows regressed: conv@64x14 b2 fast" in table
