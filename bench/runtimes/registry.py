"""The runtimes by name, the Python packages each needs, and the check that they are there.

No runtime package is imported here until a runtime is asked for by name, so `bench` imports
without onnxruntime or openvino installed.
"""
from __future__ import annotations

import importlib

from bench.targets import BenchInputError

RUNTIMES = ("reference", "fast", "onnxruntime", "openvino")
TORCH_RUNTIMES = ("reference", "fast")  # torch modules: torch.compile, train mode and the torch allocator apply
# runtime -> the Python packages it imports (the pip name is the import name for all of them)
PACKAGES: dict[str, tuple[str, ...]] = {
    "reference": (), "fast": (), "onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino",),
}


def check_runtime(name: str) -> None:
    """Raise BenchInputError (one line, naming --runtime) for an unknown runtime or one whose package is missing."""
    if name not in RUNTIMES:
        raise BenchInputError(f"--runtime {name!r}: valid runtimes: {', '.join(RUNTIMES)}")
    for package in PACKAGES[name]:
        try:
            importlib.import_module(package)
        except ImportError:
            raise BenchInputError(f"--runtime {name}: needs the Python package {package!r} "
                                  f"(pip install {package})") from None
