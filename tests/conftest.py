import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests here do real work (build modules, run them), whose time depends on the machine and
# on whatever else runs on it: no per-example deadline, and no failing because generating the
# examples was slow on a busy machine. The number of examples stays each test's own.
settings.register_profile("container-bench", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("container-bench")


def perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter and BatchNorm statistic off its initial value, so that a test cannot
    pass because of a zero, a one or a symmetric initialisation (sa_weight = 0 mixes at exactly 1/2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _machine_reference_in_a_temporary_directory(tmp_path_factory):
    """The machine's reference speed (bench.machine) of this test session: in a temporary directory and
    (in this process) from a short measurement, so that tests neither spend seconds on it nor leave a rough
    reference in the checkout's results/machines/ for real runs to normalise with. tests/test_machine_speed.py
    checks the real file's life cycle in its own directory."""
    import bench.machine
    from bench.timing import StopRule

    directory = tmp_path_factory.mktemp("machines")
    patch = pytest.MonkeyPatch()
    patch.setenv(bench.machine.MACHINES_ENV, str(directory))  # processes the tests start look there too
    patch.setattr(bench.machine, "REFERENCE_STOP", StopRule(rel_iqr=0.0, min_runs=3, min_time_s=0.2, max_time_s=0.2))
    patch.setattr(bench.machine, "REFERENCE_WARMUP_S", 0.05)
    yield directory
    patch.undo()
