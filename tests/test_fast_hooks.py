"""container.fast's module-registration hooks: none at import; while optimized models live, registrations refold
only those models' constants; once they are collected, the process is as it was."""
import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn as nn

import container
from container import MixBlock, optimize
from container.fast import fold
from tests.conftest import perturb_

ROOT = Path(__file__).resolve().parents[1]

HOOK_COUNTS = """
from torch.nn.modules import module as m

def hook_counts():
    return (len(m._global_parameter_registration_hooks), len(m._global_buffer_registration_hooks),
            len(m._global_module_registration_hooks))
"""


def run_python(body: str) -> str:
    """Run HOOK_COUNTS + body in a fresh interpreter at the repository root; its stdout."""
    done = subprocess.run([sys.executable, "-c", HOOK_COUNTS + textwrap.dedent(body)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_packages_installs_no_registration_hooks():
    out = run_python("""
        before = hook_counts()
        import container, container.fast, bench
        print(before, hook_counts())
    """)
    before, after = out.strip().split(") (")
    assert before + ")" == "(0, 0, 0)" and "(" + after == "(0, 0, 0)", out


def test_the_hooks_live_only_as_long_as_optimized_models():
    out = run_python("""
        import gc
        import torch
        import container

        initial = hook_counts()
        block = container.optimize(container.MixBlock(32, 2))
        cfg = dict(depth=1, dim=16, heads=2, kind="mix", kernel_size=3, mlp_ratio=2.0, patch_size=4)
        net = container.optimize(container.build(container.NetworkConfig.from_dict(
            {"stages": [cfg], "num_classes": 10, "image_size": 32})))
        with torch.no_grad():
            block(torch.randn(1, 32, 6, 6)), net(torch.randn(1, 3, 32, 32))
        live = hook_counts()
        del block
        gc.collect()
        one_left = hook_counts()
        del net
        gc.collect()
        print(initial, live, one_left, hook_counts())
    """)
    assert out.split() == ["(0,", "0,", "0)", "(1,", "1,", "1)", "(1,", "1,", "1)", "(0,", "0,", "0)"], out


def _block() -> nn.Module:
    return perturb_(MixBlock(32, 2)).eval()


def test_registrations_outside_optimized_trees_do_not_refold():
    fast = optimize(_block())
    other = nn.Sequential(nn.Linear(2, 2))
    generation = fold._structure[0]
    other.register_buffer("b", torch.zeros(1))
    other[0].weight = nn.Parameter(torch.ones(2, 2))
    other.add_module("extra", nn.ReLU())
    nn.Conv2d(3, 3, 1)  # a new module registers its own parameters
    assert fold._structure[0] == generation
    fast.norm1.running_mean = fast.norm1.running_mean + 0.1  # inside the tree: refolds
    assert fold._structure[0] > generation


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def test_registrations_inside_optimized_trees_refold_the_constants():
    block = _block()
    fast = optimize(block)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        before = fast(x).clone()

        def changed(change) -> None:
            generation = fold._structure[0]
            change()
            assert fold._structure[0] > generation
            block.load_state_dict(fast.state_dict())
            y = fast(x)
            assert _rel_err(y, block(x)) < 1e-4 and _rel_err(y, before) > 1e-3

        changed(lambda: setattr(fast.conv1, "weight", nn.Parameter(fast.conv1.weight * 0.5)))
        changed(lambda: fast.norm2.register_buffer("running_var", fast.norm2.running_var * 3.0))
        norm = perturb_(nn.BatchNorm2d(32), seed=5).eval()
        changed(lambda: setattr(fast, "norm1", norm))
        # a submodule added later joins the tree: registrations on it refold too
        changed(lambda: setattr(norm, "running_mean", norm.running_mean - 0.4))
        # and so do a copy's
        copied = copy.deepcopy(fast)
        copied(x)
        copied.conv2.bias = nn.Parameter(copied.conv2.bias + 1.0)
        block.load_state_dict(copied.state_dict())
        assert _rel_err(copied(x), block(x)) < 1e-4


def test_a_network_refolds_after_a_registration_in_one_of_its_blocks():
    cfg = dict(depth=1, dim=16, heads=2, kind="mix", kernel_size=3, mlp_ratio=2.0, patch_size=4)
    net = perturb_(container.build(container.NetworkConfig.from_dict(
        {"stages": [cfg], "num_classes": 10, "image_size": 32}))).eval()
    fast = optimize(net)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fast(x)
        fast.blocks1[0].mlp.fc2.bias = nn.Parameter(fast.blocks1[0].mlp.fc2.bias + 1.0)
        net.load_state_dict(fast.state_dict())
        assert _rel_err(fast(x), net(x)) < 1e-4
