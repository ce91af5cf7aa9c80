"""The environment a measurement was taken in, and a fingerprint of the hardware behind it."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shutil
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import psutil
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> str:
    commit = _git("rev-parse", "--short=12", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit or "unknown"


def _gpu_driver() -> str:
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


@lru_cache(maxsize=None)
def _static_environment() -> dict[str, object]:
    cuda = torch.cuda.is_available()
    return {
        "cpu_model": _cpu_model(),
        # The vector ISA torch dispatches to (AVX2, AVX512, ...): "AMD EPYC" names CPUs of either kind.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_cores_physical": psutil.cpu_count(logical=False) or 0,
        "cpu_cores_logical": psutil.cpu_count(logical=True) or 0,
        "memory_total_bytes": psutil.virtual_memory().total,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else "",
        "gpu_driver": _gpu_driver() if cuda else "",
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda or "",
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_summary(env: dict) -> str:
    """'AMD EPYC (AVX512), 2 logical cores[, GPU ... (driver ...)]' from an environment() dict."""
    isa = f" ({env['cpu_capability']})" if env.get("cpu_capability") else ""
    gpu = f", GPU {env['gpu_name']} (driver {env.get('gpu_driver') or '?'})" if env.get("gpu_name") else ""
    return f"{env.get('cpu_model', '?')}{isa}, {env.get('cpu_cores_logical', '?')} logical cores{gpu}"


# The packages whose versions decide what a converted model computes and how fast (package_versions).
RUNTIME_PACKAGES = ("torch", "numpy", "onnx", "onnxscript", "onnxruntime", "openvino")


def package_versions(packages: tuple[str, ...] = RUNTIME_PACKAGES) -> dict[str, str | None]:
    """Python's version and each package's installed version (None: not installed), from the package
    metadata: nothing is imported."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def environment(device: str = "cpu", threads: int | None = None) -> dict[str, object]:
    """Everything needed to tell where and when a measurement came from."""
    return _static_environment() | {
        "device": str(device),
        "threads": threads or torch.get_num_threads(),
        "git_commit": git_commit(),
        "timestamp_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def fingerprint(device: str = "cpu", threads: int | None = None) -> str:
    """A short, stable id of the hardware and software that latencies depend on."""
    env = _static_environment()
    keys = ["cpu_model", "cpu_capability", "cpu_cores_logical", "torch_version"]
    if str(device).startswith("cuda"):
        keys += ["gpu_name", "cuda_version"]
    parts = {k: env[k] for k in keys} | {"device": str(device).split(":")[0], "threads": threads}
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    return digest
