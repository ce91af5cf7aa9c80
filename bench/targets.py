"""What can be profiled: one block at a stage shape, a whole network, or any user module.

Besides the registered networks, a network can come from a config file (JSON or YAML, e.g. the
search's best.json) and a module from a `package.module:callable` spec, so a user's own network or
block is profiled with every option of the harness; the row's name says where it came from.
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import yaml

import container
from container import NetworkConfig, as_config

HEAD_DIM = 32
# The four Container stages: (dim, tokens per side, batch size used for block figures).
STAGE_SHAPES: tuple[tuple[int, int, int], ...] = ((64, 56, 8), (128, 28, 16), (320, 14, 32), (512, 7, 64))


class BenchInputError(ValueError):
    """Bad input to the harness: the CLIs print it on one line and exit 2."""


CONFIG_SUFFIXES = (".json", ".yaml", ".yml")


def read_document(path: str | os.PathLike, what: str) -> Any:
    """The data in a JSON or YAML file; an unreadable or malformed file raises BenchInputError, one line
    naming `what` (e.g. "--space") and the file. Exported as bench.kit.read_document: it lives here, beside
    the error it raises, because this module reads config files and bench.kit importing it back would be
    an import cycle."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BenchInputError(f"{what} {path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise BenchInputError(f"{what} {path}: cannot read (not UTF-8 text)") from None
    try:
        # JSON first: YAML 1.1 reads JSON too, except numbers such as 1e-05, which it takes for strings.
        return json.loads(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BenchInputError(f"{what} {path}: not valid JSON or YAML{where}") from None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


@dataclass(frozen=True)
class BlockTarget:
    kind: str
    dim: int
    side: int
    heads: int | None = None  # default: dim // HEAD_DIM
    kernel_size: int = 5
    mlp_ratio: float = 4.0
    mixing: str = "tied"

    def __post_init__(self) -> None:
        if self.kind not in container.BLOCK_KINDS:
            raise BenchInputError(f"kind={self.kind!r}: unknown block kind; valid kinds: "
                                  f"{', '.join(container.BLOCK_KINDS)}")

    @property
    def num_heads(self) -> int:
        return self.heads or max(1, self.dim // HEAD_DIM)

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.dim}x{self.side}"

    def build(self) -> nn.Module:
        return container.ContainerBlock(self.dim, self.num_heads, self.kind, self.kernel_size, self.mlp_ratio,
                                        tokens=(self.side, self.side), mixing=self.mixing)

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.dim, self.side, self.side)

    def columns(self) -> dict[str, Any]:
        return {"target": "block", "name": self.name, "kind": self.kind, "dim": self.dim, "side": self.side,
                "heads": self.num_heads, "head_dim": self.dim // self.num_heads, "kernel_size": self.kernel_size,
                "mlp_ratio": self.mlp_ratio, "image_size": None}


@dataclass(frozen=True)
class NetworkTarget:
    config: NetworkConfig
    label: str = "network"

    @classmethod
    def named(cls, name: str, **overrides: Any) -> "NetworkTarget":
        try:
            return cls(container.model_config(name, **overrides), name)
        except ValueError as e:
            raise BenchInputError(str(e)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "NetworkTarget":
        """The network of a config file (JSON or YAML: a NetworkConfig's fields, as the search writes
        best.json), labelled with the path as given, so its rows say where the network came from."""
        data = read_document(path, "network config")
        if not isinstance(data, Mapping):
            got = "an empty file" if data is None else f"a {type(data).__name__}"
            raise BenchInputError(f"{path}: expected a mapping of NetworkConfig fields (stages, image_size, ...), "
                                  f"got {got}")
        try:
            config = as_config(data)
        except (ValueError, TypeError) as e:  # the message names the field, e.g. stages[1].dim=30: ...
            raise BenchInputError(f"{path}: {e}") from None
        return cls(config, str(path))

    @property
    def name(self) -> str:
        return self.label

    def build(self) -> nn.Module:
        return container.build(self.config)

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, self.config.in_chans, self.config.image_size, self.config.image_size)

    def columns(self) -> dict[str, Any]:
        kinds = "/".join(s.kind for s in self.config.stages)
        return {"target": "network", "name": self.name, "kind": kinds, "dim": self.config.stages[-1].dim,
                "side": self.config.feature_sizes()[-1], "heads": None, "head_dim": None, "kernel_size": None,
                "mlp_ratio": None, "image_size": self.config.image_size}


def network_target(spec: str) -> NetworkTarget:
    """A registered network by name, or the network of a config file (a path ending in .json, .yaml or
    .yml, or any existing file)."""
    if spec in container.list_models():
        return NetworkTarget.named(spec)
    if spec.lower().endswith(CONFIG_SUFFIXES) or Path(spec).is_file():
        return NetworkTarget.from_file(spec)
    raise BenchInputError(f"{spec!r}: unknown network; valid networks: {', '.join(container.list_models())}, "
                          f"or a config file ({', '.join(CONFIG_SUFFIXES)}) such as the search's best.json")


@dataclass(frozen=True)
class ModuleTarget:
    """Any nn.Module with the shape of one input sample, e.g. (3, 224, 224).

    From a `spec` ("package.module:callable", see from_callable) `module` is None: each build() calls
    the callable again, so every measurement gets fresh weights from the seed (as a network does) and
    the isolated RSS worker, in another process, builds its own instead of receiving a pickled one.
    """

    module: nn.Module | None
    sample_shape: tuple[int, ...]
    label: str = "module"
    spec: str | None = None

    def __post_init__(self) -> None:
        if self.module is None and self.spec is None:
            raise BenchInputError("module: needs a module, or a spec 'package.module:callable' that builds one")

    @classmethod
    def from_callable(cls, spec: str, sample_shape: Sequence[int]) -> "ModuleTarget":
        """The module that `spec` ("package.module:callable", the callable taking no arguments) returns,
        checked now: importable, returns an nn.Module, and runs on one sample of `sample_shape`.
        The working directory is importable, as under `python -m`. Labelled with the spec."""
        shape = tuple(sample_shape)
        if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
            raise BenchInputError(f"sample_shape={list(shape)}: one sample's shape as positive integers, "
                                  f"e.g. 3,224,224")
        target = cls(None, shape, spec, spec=spec)
        module = target.build()
        try:
            with torch.no_grad():
                module.eval()(torch.zeros(target.input_shape(1)))
        except Exception as e:  # whatever the user's forward raises on this input
            raise BenchInputError(f"{spec}: fails on an input of shape {target.input_shape(1)} "
                                  f"({_first_line(e)})") from None
        return target

    @property
    def name(self) -> str:
        return self.label

    def build(self) -> nn.Module:
        return self.module if self.spec is None else _module_from_spec(self.spec)

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        return (batch_size, *self.sample_shape)

    def columns(self) -> dict[str, Any]:
        # Every target's keys, so that a run of modules alone has the columns the report reads.
        return {"target": "module", "name": self.label, "kind": None, "dim": None, "side": None, "heads": None,
                "head_dim": None, "kernel_size": None, "mlp_ratio": None, "image_size": None}


def _module_from_spec(spec: str) -> nn.Module:
    module_name, _, attribute = (part.strip() for part in spec.partition(":"))
    if not module_name or not attribute:
        raise BenchInputError(f"{spec!r}: expected MODULE:CALLABLE, e.g. mypackage.models:build_net")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        namespace = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while it runs
        raise BenchInputError(f"{spec}: cannot import {module_name} ({_first_line(e)})") from None
    try:
        factory = functools.reduce(getattr, attribute.split("."), namespace)
    except AttributeError:
        raise BenchInputError(f"{spec}: module {module_name} has no attribute {attribute}") from None
    if not callable(factory):
        raise BenchInputError(f"{spec}: {attribute} is a {type(factory).__name__}, not callable")
    try:
        module = factory()
    except Exception as e:  # whatever the user's callable raises
        raise BenchInputError(f"{spec}: calling {attribute}() raised {_first_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise BenchInputError(f"{spec}: {attribute}() returned a {type(module).__name__}, not an nn.Module")
    return module


def parse_shape(text: str) -> tuple[int, ...]:
    """One sample's shape from "C,H,W" (any number of positive integers, e.g. "3,224,224")."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise BenchInputError(f"{text!r}: expected C,H,W as positive integers, e.g. 3,224,224")
    return shape


Target = BlockTarget | NetworkTarget | ModuleTarget


def as_target(obj: Any, sample_shape: tuple[int, ...] | None = None) -> Target:
    """A target from a target, a network name, a NetworkConfig / dict, or a module plus its sample shape."""
    if isinstance(obj, (BlockTarget, NetworkTarget, ModuleTarget)):
        return obj
    if isinstance(obj, str):
        return NetworkTarget.named(obj)
    if isinstance(obj, nn.Module):
        if sample_shape is None:
            raise BenchInputError("sample_shape: needed to profile a module, e.g. (3, 224, 224)")
        return ModuleTarget(obj, tuple(sample_shape), type(obj).__name__)
    if isinstance(obj, (NetworkConfig, Mapping)):
        try:
            return NetworkTarget(as_config(obj))
        except ValueError as e:
            raise BenchInputError(str(e)) from None
    raise BenchInputError(f"target: cannot profile a {type(obj).__name__}")
