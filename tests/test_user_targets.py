"""`python -m bench` on the user's own networks and modules: config files beside the registered names
(--networks, best.json exactly as the search writes it, JSON or YAML) and any nn.Module built by a
`package.module:callable` (--model, with --input-shape), with the rows named by where each came from.
Bad input is one line on stderr naming the file and field, or the flag, with exit status 2."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import bench.cli
import bench.suite
import search.__main__
from bench.kit import read_document, write_json
from bench.roofline import Roofline
from bench.targets import BenchInputError, ModuleTarget, NetworkTarget, network_target, parse_shape
from container import NetworkConfig, StageConfig

TINY = NetworkConfig(stages=(StageConfig(depth=1, dim=16, heads=1, kind="mix", kernel_size=3, patch_size=4),
                             StageConfig(depth=1, dim=32, heads=2, kind="conv", kernel_size=3, patch_size=2)),
                     image_size=32, num_classes=10)

USER_MODULE = '''
import torch.nn as nn


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def not_a_module():
    return 42


def broken():
    raise RuntimeError("weights not found\\nsecond line")


NOT_CALLABLE = 3
'''


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def exit_code(argv: list[str], main=bench.cli.main) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def fast_suite(monkeypatch):
    """No GEMM calibration: the roofline figures are beside the point here."""
    roofline = Roofline("cpu", "fp32", peak_flops=50e9, gemm_size=1024, bandwidth_bytes_s=10e9)
    monkeypatch.setattr(bench.suite, "calibrate", lambda device, dtype, **kwargs: roofline)


@pytest.fixture
def best_json(tmp_path, monkeypatch) -> str:
    """best.json exactly as the search writes it (search/report.py), under a relative path as a user types it."""
    monkeypatch.chdir(tmp_path)
    write_json(tmp_path / "search" / "best.json", TINY.to_dict())
    return "search/best.json"


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A module file in the working directory, importable as under `python -m`; a fresh name per test."""
    name = f"user_nets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def run_rows(out: Path, *argv: str) -> pd.DataFrame:
    assert bench.cli.main([*argv, "--quick", "--no-progress", "--out", str(out)]) == 0
    return pd.read_csv(out / "results.csv")


# --- what runs ------------------------------------------------------------------------------------------------


def test_best_json_and_its_yaml_twin_profile_on_both_runtimes_named_by_their_paths(tmp_path, best_json,
                                                                                    fast_suite):
    (tmp_path / "best.yaml").write_text(yaml.safe_dump(TINY.to_dict()))
    rows = run_rows(tmp_path / "run", "--networks", f"{best_json},best.yaml", "--runtime", "reference,fast")
    # Naming networks selects them: no block kind runs.
    assert sorted(zip(rows["name"], rows["runtime"])) == [
        ("best.yaml", "fast"), ("best.yaml", "reference"), (best_json, "fast"), (best_json, "reference")]
    assert set(rows["status"]) == {"ok"} and set(rows["target"]) == {"network"}
    assert set(rows["image_size"]) == {32} and set(rows["kind"]) == {"mix/conv"}
    assert rows["params"].nunique() == 1 and rows["max_rel_error"].max() < 1e-4


def test_networks_run_at_each_batch_size_beside_registered_names(tmp_path, best_json, monkeypatch):
    jobs = []
    monkeypatch.setattr(bench.cli, "run_suite", lambda js, out_dir, **kwargs: jobs.extend(js))
    assert bench.cli.main(["--networks", f"container_light,{best_json}", "--batch-sizes", "1,4"]) == 0
    assert sorted((j.target.name, j.batch_size) for j in jobs) == [
        ("container_light", 1), ("container_light", 4), (best_json, 1), (best_json, 4)]
    jobs.clear()
    assert bench.cli.main(["--suite", "runtimes", "--runtime", "reference", "--networks", best_json, "--kinds",
                           "conv"]) == 0
    networks = [(j.target.name, j.batch_size) for j in jobs if j.group == "network"]
    assert networks == [(best_json, 1), (best_json, 8)]  # the runtimes suite's network batches
    assert {j.target.name for j in jobs if j.group != "network"} == {"conv@64x56", "conv@128x28", "conv@320x14",
                                                                      "conv@512x7"}


def test_a_module_profiles_on_the_reference_and_is_export_failed_on_fast(tmp_path, user_module, fast_suite):
    spec = f"{user_module}:tiny_cnn"
    rows = run_rows(tmp_path / "run", "--model", spec, "--input-shape", "3,16,16", "--runtime", "reference,fast")
    assert list(rows["name"]) == [spec, spec] and set(rows["target"]) == {"module"}
    by_runtime = rows.set_index("runtime")
    assert by_runtime.loc["reference", "status"] == "ok" and by_runtime.loc["reference", "latency_median_ms"] > 0
    assert by_runtime.loc["fast", "status"] == "export_failed"  # container.optimize takes Container modules only
    assert "ContainerBlock or a ContainerNet" in by_runtime.loc["fast", "status_reason"]


def test_a_module_and_a_config_file_get_their_peak_rss_in_the_isolated_worker(best_json, user_module):
    """The worker is another process: it rebuilds the module from its spec and the network from its config."""
    targets = [ModuleTarget.from_callable(f"{user_module}:tiny_cnn", (3, 16, 16)), NetworkTarget.from_file(best_json)]
    with bench.RssWorker() as worker:
        for target in targets:
            assert worker.measure(target, 1, bench.Options(), 1).peak_bytes > 0


def test_a_module_target_builds_a_fresh_module_each_time(user_module):
    target = ModuleTarget.from_callable(f"{user_module}:tiny_cnn", [3, 8, 8])
    assert target.module is None and target.name == f"{user_module}:tiny_cnn" and target.input_shape(2) == (2, 3, 8, 8)
    torch.manual_seed(0)
    a = target.build()
    torch.manual_seed(0)
    b = target.build()
    assert a is not b and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_network_target_takes_names_and_files(best_json):
    assert network_target("container_light").name == "container_light"
    assert network_target(best_json).config == TINY
    assert parse_shape("3,224,224") == (3, 224, 224) and parse_shape("16") == (16,)


# --- bad input: one line, exit 2, no traceback -------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return name


def bad_config(tmp_path: Path) -> str:
    data = TINY.to_dict()
    data["stages"][1]["dim"] = 30  # not divisible by the stage's 4 heads
    data["stages"][1]["heads"] = 4
    return write(tmp_path, "bad.json", json.dumps(data))


@pytest.mark.parametrize("make,expected", [
    (bad_config, ["bad.json", "stages[1].dim=30", "not divisible"]),
    (lambda p: write(p, "list.yaml", "- 1\n- 2\n"), ["list.yaml", "expected a mapping", "got a list"]),
    (lambda p: write(p, "empty.yml", ""), ["empty.yml", "got an empty file"]),
    (lambda p: write(p, "broken.yaml", "stages: [1, 2\nimage_size: 32\n"), ["broken.yaml", "not valid JSON or YAML",
                                                                            "at line"]),
    (lambda p: write(p, "extra.json", json.dumps(TINY.to_dict() | {"depth": 3})), ["extra.json", "unknown field"]),
    (lambda p: "missing.json", ["missing.json", "cannot read"]),
    (lambda p: "resnet50", ["'resnet50'", "unknown network", "container_light", "config file"]),
])
def test_a_bad_network_names_the_file_and_the_field(make, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert exit_code(["--networks", make(tmp_path), "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--networks" in line and all(e in line for e in expected), line


@pytest.mark.parametrize("spec,expected", [
    ("no_colon_here", ["expected MODULE:CALLABLE"]),
    ("no_such_package_xyz:build", ["cannot import no_such_package_xyz", "ModuleNotFoundError"]),
    ("{mod}:missing", ["has no attribute missing"]),
    ("{mod}:NOT_CALLABLE", ["NOT_CALLABLE is a int, not callable"]),
    ("{mod}:not_a_module", ["returned a int, not an nn.Module"]),
    ("{mod}:broken", ["calling broken() raised RuntimeError: weights not found"]),
    ("{mod}:tiny_cnn", ["fails on an input of shape (1, 5, 8, 8)"]),  # --input-shape 5,8,8: 3 channels expected
])
def test_a_bad_model_says_what_is_wrong(spec, expected, user_module, capsys):
    argv = ["--model", spec.format(mod=user_module), "--input-shape", "5,8,8" if "tiny" in spec else "3,8,8"]
    assert exit_code([*argv, "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--model" in line and all(e in line for e in expected), line


@pytest.mark.parametrize("argv,expected", [
    (["--model", "x:y"], ["--model", "needs --input-shape"]),
    (["--input-shape", "3,8,8"], ["--input-shape", "--model only"]),
    (["--model", "x:y", "--input-shape", "3,0,8"], ["--input-shape", "'3,0,8'", "C,H,W"]),
    (["--model", "x:y", "--input-shape", "3x8x8"], ["--input-shape", "C,H,W"]),
])
def test_input_shape_goes_with_model_and_is_checked(argv, expected, capsys):
    assert exit_code([*argv, "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert all(e in line for e in expected), line


def test_read_document_errors_name_what_and_the_file(tmp_path):
    assert read_document(tmp_path / write(tmp_path, "a.json", '{"rate": 1e-05}'), "x") == {"rate": 1e-05}  # a float
    with pytest.raises(BenchInputError, match=r"^--suite .*b.yaml: not valid JSON or YAML at line 2$"):
        read_document(tmp_path / write(tmp_path, "b.yaml", "a: 1\n  b: [\n"), "--suite")
    with pytest.raises(BenchInputError, match=r"cannot read \(not UTF-8 text\)"):
        (tmp_path / "c.json").write_bytes(b"\xff\xfe\x00")
        read_document(tmp_path / "c.json", "--suite")


@pytest.mark.parametrize("text,expected", [("stages: [\n  - depth: 1\n    dim: [\n", "not valid JSON or YAML at line"),
                                           (None, "cannot read")])
def test_search_space_loading_still_reports_a_bad_file_in_one_line(text, expected, tmp_path, capsys):
    path = tmp_path / "space.yaml"
    if text is not None:
        path.write_text(text)
    assert exit_code(["--budget-ms", "10", "--space", str(path)], search.__main__.main) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--space {path}: {expected}" in line, line
