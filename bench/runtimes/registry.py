"""The runtimes by name, the Python packages each needs, and the check that they are there.

No runtime package is imported here until a runtime is asked for by name, so `bench` imports
without onnxruntime or openvino installed. `aot` needs no package beyond torch, but a C++ compiler
(AOTInductor compiles the network with the one torch finds).
"""
from __future__ import annotations

import importlib

from bench.targets import BenchInputError

RUNTIMES = ("reference", "fast", "onnxruntime", "openvino", "aot")
TORCH_RUNTIMES = ("reference", "fast")  # torch modules: torch.compile, train mode and the torch allocator apply
# runtime -> the Python packages it imports (the pip name is the import name for all of them)
PACKAGES: dict[str, tuple[str, ...]] = {
    "reference": (), "fast": (), "onnxruntime": ("onnxruntime", "onnx", "onnxscript"), "openvino": ("openvino",),
    "aot": (),
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
    if name == "aot" and cpp_compiler() is None:
        raise BenchInputError(f"--runtime aot: needs a C++ compiler to compile the package, and torch finds none "
                              f"(it looks for {' or '.join(_compiler_names())}: install one, or set CXX)")


def cpp_compiler() -> str | None:
    """The C++ compiler AOTInductor would use (torch._inductor.cpp_builder.get_cpp_compiler), None if none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler  # here: only `aot` loads Inductor

        return get_cpp_compiler()
    except Exception:  # InvalidCxxCompiler, or an Inductor that cannot load here
        return None


def _compiler_names() -> list[str]:
    try:
        from torch._inductor import config

        names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    except Exception:
        names = ()
    return [str(n) for n in names if n] or ["g++"]
