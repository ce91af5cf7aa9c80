"""`python -m bench export`: the artifact each runtime runs, written with its example input, the reference output
and a manifest, and loadable without this project: a fresh process with only the runtime's package and numpy
loads it and reproduces expected.npy within the manifest's tolerance."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bench.cli
from bench.export import ARTIFACTS, _publish, directory_name, export_artifacts
from bench.kit import RESULTS_ENV
from bench.options import Options
from bench.runtimes import RUNTIMES
from bench.suite import QUICK_STOP
from bench.targets import BlockTarget

USER_MODULE = '''
import torch.nn as nn


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))
'''
AOT_MISSING = "the aot runtime is not registered here ('aot' not in bench.runtimes.RUNTIMES)"
AOT = "aot" in RUNTIMES
BLOCK = BlockTarget("mix", 32, 4)  # a tiny block: 32 channels, 4x4 tokens, one head
MODULE_SHAPE = "3,16,16"

# How a user loads each artifact (as docs/export.md shows): only the runtime's package and numpy.
LOADERS = {
    "onnxruntime": """
        import onnxruntime as ort
        session = ort.InferenceSession(f"{d}/model.onnx", providers=["CPUExecutionProvider"])
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
    """,
    "openvino": """
        import openvino as ov
        core = ov.Core()
        compiled = core.compile_model(core.read_model(f"{d}/model.xml"), "CPU",
                                      manifest["runtime_settings"]["properties"])
        out = compiled.create_infer_request().infer({0: x})[0]
    """,
    "aot": """
        import torch
        runner = torch._inductor.aoti_load_package(f"{d}/model.pt2")
        with torch.inference_mode():
            out = runner(torch.from_numpy(x))
        out = (out[0] if isinstance(out, (list, tuple)) else out).float().numpy()
    """,
}
CHECK = """
    import json, sys
    import numpy as np
    d = sys.argv[1]
    manifest = json.load(open(f"{d}/manifest.json"))
    x = np.load(f"{d}/" + manifest["files"]["input"])
    LOADER
    expected = np.load(f"{d}/" + manifest["files"]["expected"])
    error = float(np.abs(out - expected).max() / np.abs(expected).max())
    project = sorted(n for n in sys.modules if n.split(".")[0] in ("bench", "container"))
    print(json.dumps({"error": error, "tolerance": manifest["tolerance"], "project": project}))
"""
MANIFEST_FIELDS = {"schema", "runtime", "files", "target", "batch_size", "input_shape", "input_dtype", "output_shape",
                   "dtype", "seed", "device", "threads", "runtime_settings", "convert_s", "load_s", "status", "reason",
                   "max_rel_error", "tolerance", "latency", "stop_rule", "versions", "machine", "command",
                   "created_utc"}


def exit_code(argv: list[str]) -> int:
    try:
        return bench.cli.main(argv)
    except SystemExit as e:
        return e.code


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text and "usage:" not in text
    return lines[0]


def export(root: Path, runtime: str) -> tuple[Path, str]:
    """The tiny module exported by the CLI (--model) and the tiny block by the library, for `runtime`, under
    `root`; returns the output directory and the module's spec."""
    name = f"export_user_nets_{abs(hash(str(root))) % 10**8}"
    (root / f"{name}.py").write_text(USER_MODULE)
    spec = f"{name}:tiny_cnn"
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RESULTS_ENV, str(root / "results"))  # the aot runtime's package cache
        patch.chdir(root)
        patch.syspath_prepend(str(root))
        assert bench.cli.main(["export", "--runtime", runtime, "--model", spec, "--input-shape", MODULE_SHAPE,
                               "--quick", "--no-progress", "--threads", "1", "--out", str(out)]) == 0
        sys.modules.pop(name, None)
        variants = [Options(runtime=runtime, threads=1, stop=QUICK_STOP)]
        [artifact] = export_artifacts([BLOCK], [2], variants, out, progress=False)
    assert artifact.status == "ok", artifact.reason
    return out, spec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each runtime's exports, made once, when a test first asks for them."""
    done: dict[str, tuple[Path, str]] = {}

    def get(runtime: str) -> tuple[Path, str]:
        if runtime == "aot" and not AOT:
            pytest.skip(AOT_MISSING)
        if runtime not in done:
            done[runtime] = export(tmp_path_factory.mktemp(f"export-{runtime}"), runtime)
        return done[runtime]
    return get


def artifact_dir(out: Path, target: str, runtime: str) -> Path:
    return out / (f"{target.replace(':', '_')}-b1-fp32" if target != "block" else "mix@32x4-b2-fp32") / runtime


@pytest.mark.parametrize("target", ["module", "block"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "aot"])
def test_an_artifact_runs_without_the_project_and_reproduces_the_reference(exported, target, runtime):
    out, spec = exported(runtime)
    directory = artifact_dir(out, spec if target == "module" else "block", runtime)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [*ARTIFACTS[runtime], "expected.npy", "input.npy", "manifest.json"])
    script = textwrap.dedent(CHECK).replace("LOADER", textwrap.dedent(LOADERS[runtime]).strip())
    proc = subprocess.run([sys.executable, "-c", script, str(directory)], cwd=directory,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["project"] == []  # neither container nor bench was imported
    assert result["error"] <= result["tolerance"]


@pytest.mark.parametrize("target", ["module", "block"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "aot"])
def test_the_manifest_says_what_the_artifact_is_and_how_fast_it_ran_here(exported, target, runtime):
    out, spec = exported(runtime)
    manifest = json.loads((artifact_dir(out, spec if target == "module" else "block", runtime)
                           / "manifest.json").read_text())
    assert MANIFEST_FIELDS <= set(manifest)
    assert manifest["runtime"] == runtime and manifest["status"] == "ok" and manifest["dtype"] == "fp32"
    assert manifest["max_rel_error"] <= manifest["tolerance"] == 1e-4
    latency = manifest["latency"]
    for column in ("latency_median_ms", "latency_norm_ms", "machine_speed"):
        assert isinstance(latency[column], float) and latency[column] > 0, column
    assert set(manifest["versions"]) >= {"python", "torch", "onnxruntime", "openvino"}
    assert manifest["versions"]["torch"] and manifest["versions"][runtime if runtime != "aot" else "torch"]
    assert manifest["machine"]["fingerprint"] and manifest["machine"]["summary"] and manifest["threads"] == 1
    if runtime == "aot":
        assert manifest["aot"]["source"] in ("reference", "fast") and isinstance(manifest["aot"]["cached"], bool)
    if target == "module":
        assert manifest["target"] == {"type": "module", "name": spec, "module": spec, "sample_shape": [3, 16, 16]}
        assert manifest["input_shape"] == [1, 3, 16, 16] and manifest["output_shape"] == [1, 10]
        assert manifest["command"].endswith(f"--out {out}")
    else:
        assert manifest["target"]["type"] == "block" and manifest["command"] == ""
        assert {"kind": "mix", "dim": 32, "side": 4, "heads": 1}.items() <= manifest["target"]["config"].items()
        assert manifest["input_shape"] == [2, 32, 4, 4]


def test_directory_names_are_one_path_component():
    assert directory_name(BLOCK, 8, "bf16") == "mix@32x4-b8-bf16"
    network = bench.cli.network_target("container_light")
    assert directory_name(network, 1, "fp32") == "container_light-b1-fp32"


def test_a_new_export_replaces_the_old_directory_whole(tmp_path):
    old, new = tmp_path / "target" / "onnxruntime", tmp_path / "staging"
    old.mkdir(parents=True)
    (old / "stale.onnx").write_text("old")
    new.mkdir()
    (new / "model.onnx").write_text("new")
    _publish(new, old)
    assert [p.name for p in old.iterdir()] == ["model.onnx"] and not new.exists()
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["onnxruntime"]


@pytest.mark.parametrize("runtime", ["reference", "fast"])
def test_a_torch_runtime_has_no_artifact_one_line_exit_2(runtime, tmp_path, capsys):
    assert exit_code(["export", "--runtime", runtime, "--out", str(tmp_path / "out")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"--runtime {runtime}" in line and "onnxruntime, openvino" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,expected", [
    (["--runtime", "onnxruntime", "--out", "{file}"], ["--out", "not a directory"]),
    (["--runtime", "tensorrt"], ["--runtime 'tensorrt'", "onnxruntime, openvino"]),
    (["--runtime", "onnxruntime", "--dtype", "bf16"], ["--dtype bf16", "fp32 only"]),
    (["--runtime", "openvino", "--model", "x:y"], ["--model", "needs --input-shape"]),
    (["--runtime", "openvino", "--batch-sizes", "0"], ["--batch-sizes"]),
    (["--out", "{dir}"], ["--runtime"]),  # required
])
def test_bad_input_is_one_line_naming_the_flag_exit_2(argv, expected, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("")
    argv = [a.format(file=a_file, dir=tmp_path / "out") for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    assert exit_code(["export", *argv, "--no-progress"]) == 2
    line = one_line(capsys.readouterr().err)
    assert all(e in line for e in expected), line
    assert not (tmp_path / "out").exists()
