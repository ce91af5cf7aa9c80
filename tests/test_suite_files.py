"""Gate suite files: every kind of row (block at a shape, registered network, config file, module:callable) with
its batch, runtime, dtype and threads; baselines kept per suite and machine; the worker building each kind of row;
and bad suite files as one line naming the row and the field, exit 2."""
import json
import textwrap

import pytest
import torch

import bench
import container
from bench import BenchInputError, regress
from bench import cli as bench_cli
from bench.regress import worker as regress_worker

TINY = {"stages": [{"depth": 1, "dim": 16, "heads": 2, "kind": "mix", "patch_size": 4},
                   {"depth": 1, "dim": 32, "heads": 2, "kind": "conv", "patch_size": 2}],
        "image_size": 32, "num_classes": 10}

USER_MODULE = textwrap.dedent("""
    import torch.nn as nn

    def tiny_net():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 4))

    def not_a_module():
        return 42
""")


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """A user's folder: a best.json as the search writes it and a module of their own, importable."""
    (tmp_path / "best.json").write_text(json.dumps(container.as_config(TINY).to_dict(), indent=2))
    (tmp_path / "user_models_for_suite.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def write_suite(where, text):
    path = where / "my_suite.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_suite_file_holds_every_kind_of_row_with_its_settings(user_dir):
    path = write_suite(user_dir, """
        threads: 1
        rows:
          - {block: attn, dim: 64, side: 7, heads: 4, kernel_size: 3, batch: 2}
          - {network: container_light, runtime: fast}
          - {network: best.json, batch: 8, runtime: openvino}
          - {model: "user_models_for_suite:tiny_net", input_shape: [3, 16, 16], dtype: bf16, threads: 2}
          - {block: conv, dim: 32, side: 14, name: my conv}
    """)
    suite = regress.load_suite(path)
    assert suite.name == "my_suite" and suite.threads == 1 and suite.path == path
    assert [r.name for r in suite.rows] == ["attn@64x7 b2", "container_light b1 fast", "best.json b8 openvino",
                                            "user_models_for_suite:tiny_net b1 bf16 t2", "my conv"]
    attn, light, best, model, conv = suite.rows
    assert (attn.target, attn.heads, attn.kernel_size, attn.batch) == ("block", 4, 3, 2)
    assert (light.target, light.network, light.config, light.runtime) == ("network", "container_light", None, "fast")
    # The config file is read once, here: both sides of --against build this architecture.
    assert container.as_config(best.config) == container.as_config(TINY) and best.network == "best.json"
    assert (model.target, model.input_shape, model.dtype, model.threads) == ("model", (3, 16, 16), "bf16", 2)
    assert conv.kind == "conv" and conv.runtime == "reference"
    assert json.loads(json.dumps(model.spec()))["input_shape"] == [3, 16, 16]


def test_baselines_are_kept_per_suite_and_machine(user_dir):
    one = regress.load_suite(write_suite(user_dir, "name: one\nrows: [{block: conv, dim: 32, side: 7}]\n"))
    two = regress.load_suite(write_suite(user_dir, "name: two\nrows: [{block: conv, dim: 32, side: 7}]\n"))
    assert regress.baseline_path(one).parent.name == "one" and regress.baseline_path(two).parent.name == "two"
    assert regress.baseline_path(one).name == regress.baseline_path(two).name == f"{bench.fingerprint('cpu', 1)}.json"
    # --threads replaces the suite's default: another thread count is another baseline.
    assert regress.baseline_path(regress.load_suite(one.path, threads=2)).stem == bench.fingerprint("cpu", 2)


def test_a_row_whose_definition_changed_since_the_baseline_is_not_compared():
    old = {"threads": 1, "rows": {"a": {}, "b": {}},
           "suite": [{"name": "a", "target": "block", "batch": 4, "kind": "conv", "dim": 320, "side": 14},
                     {"name": "b", "target": "block", "batch": 4, "kind": "conv", "dim": 320, "side": 14}]}
    rows = [regress.Row("a", "block", 4, kind="conv", dim=320, side=14),  # same: defaults filled in both
            regress.Row("b", "block", 8, kind="conv", dim=320, side=14)]  # another batch under the old name
    assert regress.changed_rows(old, rows, 1) == ["b"]
    assert regress.changed_rows(old, [regress.Row("a", "block", 4, kind="conv", dim=320, side=14, dtype="bf16")],
                                1) == ["a"]


def test_the_worker_builds_config_file_and_model_rows(user_dir):
    suite = regress.load_suite(write_suite(user_dir, """
        rows:
          - {network: best.json, batch: 2}
          - {model: "user_models_for_suite:tiny_net", input_shape: [3, 16, 16], batch: 2}
          - {block: attn, dim: 64, side: 7, heads: 4, kernel_size: 3}
    """))
    best, model, attn = (regress_worker.build_target(r.spec()) for r in suite.rows)
    assert isinstance(best, bench.NetworkTarget) and best.config == container.as_config(TINY)
    assert best.name == "best.json"
    assert isinstance(model, bench.ModuleTarget) and model.input_shape(2) == (2, 3, 16, 16)
    with torch.inference_mode():
        assert model.build()(torch.zeros(model.input_shape(2))).shape == (2, 4)
    assert (attn.num_heads, attn.kernel_size) == (4, 3)


def test_the_worker_times_each_row_at_its_own_threads_and_dtype(user_dir, monkeypatch):
    seen = []
    real = regress_worker.timing.measure_interleaved
    monkeypatch.setattr(regress_worker.timing, "measure_interleaved",
                        lambda *a, **k: seen.append(k["threads"]) or real(*a, **k))
    suite = regress.load_suite(write_suite(user_dir, """
        rows:
          - {model: "user_models_for_suite:tiny_net", input_shape: [3, 8, 8], threads: 2, dtype: bf16}
          - {model: "user_models_for_suite:tiny_net", input_shape: [3, 8, 8], name: one thread}
    """))
    worker = regress_worker.Worker(user_dir)
    monkeypatch.setattr(regress_worker, "_tree_check", lambda tree: {})
    setup = worker.setup({"rows": [r.spec() for r in suite.rows], "threads": 1})
    assert setup["errors"] == {} and set(setup["rows"]) == {r.name for r in suite.rows}
    for row in suite.rows:
        worker.measure({"row": row.name, "pairs": 1})
    assert seen == [2, 1]


BAD_SUITES = [
    ("rows: [{block: conv, dim: 32, side: 7, batchsize: 4}]", "row 1 (conv): unknown key 'batchsize'"),
    ("rows: [{block: conv, dim: 32, side: 7, runtime: tensorrt}]", "row 1 (conv): runtime='tensorrt': unknown runtime"),
    ("rows: [{block: conv, dim: 32, side: 7, dtype: int8}]", "row 1 (conv): dtype='int8'"),
    ("rows: [{block: conv, dim: 32, side: 7, dtype: bf16, runtime: onnxruntime}]", "row 1 (conv): dtype bf16"),
    ("rows: [{block: conv, dim: 32, side: 7, batch: 0}]", "row 1 (conv): batch=0: must be an integer >= 1"),
    ("rows: [{block: convolution, dim: 32, side: 7}]", "row 1 (convolution): block='convolution': unknown block"),
    ("rows: [{block: attn, dim: 30, side: 7, heads: 4}]", "row 1 (attn): heads=4: dim=30 is not divisible"),
    ("rows: [{block: attn, side: 7}]", "row 1 (attn): dim: missing"),
    ("rows: [{block: conv, network: container, dim: 8, side: 7}]", "row 1: needs exactly one of block, network"),
    ("rows: [{network: no_such_net}]", "row 1 (no_such_net): network='no_such_net': neither a registered network"),
    ("rows: [{network: bad.json}]", "row 1 (bad.json): network: "),
    ("rows: [{model: 'no_such_module_xyz:f', input_shape: [3, 8, 8]}]", "no_such_module_xyz"),
    ("rows: [{model: 'user_models_for_suite:not_a_module', input_shape: [3, 8, 8]}]", "not_a_module"),
    ("rows: [{model: 'user_models_for_suite:tiny_net'}]", "input_shape=None"),
    ("rows: [{block: conv, dim: 32, side: 7}, {block: conv, dim: 32, side: 7}]", "row 2: name='conv@32x7 b1'"),
    ("rows: []", "rows: must be a non-empty list"),
    ("rowz: [{block: conv, dim: 32, side: 7}]", "unknown key 'rowz'"),
    ("rows: [{block: conv, dim: 32, side: 7}", "not valid JSON or YAML"),
]


@pytest.mark.parametrize("text,message", BAD_SUITES, ids=[m for _, m in BAD_SUITES])
def test_a_bad_suite_file_is_one_line_naming_the_row_and_the_field(user_dir, text, message, capsys):
    (user_dir / "bad.json").write_text(json.dumps({"stages": [{"depth": 1, "dim": 30, "heads": 4}]}))
    path = write_suite(user_dir, text + "\n")
    with pytest.raises(BenchInputError, match=None) as error:
        regress.load_suite(path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert bench_cli.main(["regress", "--suite", str(path), "--no-history"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_config_file_row_names_the_file_and_the_field(user_dir):
    (user_dir / "bad.json").write_text(json.dumps({"stages": [{"depth": 1, "dim": 30, "heads": 4}]}))
    path = write_suite(user_dir, "rows: [{network: bad.json}]\n")
    with pytest.raises(BenchInputError) as error:
        regress.load_suite(path)
    assert "bad.json" in str(error.value) and "dim=30" in str(error.value)


def test_a_missing_suite_file_is_one_line(tmp_path, capsys):
    assert bench_cli.main(["regress", "--suite", str(tmp_path / "none.yaml"), "--no-history"]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.yaml" in err and "\n" not in err
