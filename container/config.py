"""The one description of an architecture: a plain, JSON-serialisable, validated config.

Everything in the project (bench, search, reports) passes architectures around as a
`NetworkConfig`. It round-trips through JSON, and a bad value raises a ValueError that names
the field and the reason before any module is built.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

from container.kinds import BLOCK_KINDS, MIXING_MODES


def _fail(field_name: str, value: Any, reason: str) -> None:
    raise ValueError(f"{field_name}={value!r}: {reason}")


def _check_int(field_name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field_name, value, "must be an integer")
    if value < minimum:
        _fail(field_name, value, f"must be >= {minimum}")


def _check_positive_number(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        _fail(field_name, value, "must be a finite number > 0")


def _store_float(config: Any, name: str) -> None:
    """An int given for a float field is stored as a float: `mlp_ratio: 8` and `8.0` are one architecture, and
    must give one JSON text (the latency caches and the re-measure key on it)."""
    value = getattr(config, name)
    if isinstance(value, int) and not isinstance(value, bool):
        object.__setattr__(config, name, float(value))


@dataclass(frozen=True)
class StageConfig:
    """One stage: a patch embedding (kernel = stride = patch_size) followed by `depth` blocks."""

    depth: int
    dim: int
    heads: int = 1
    kind: str = "conv"
    kernel_size: int = 5
    mlp_ratio: float = 4.0
    patch_size: int = 2

    def __post_init__(self) -> None:
        _store_float(self, "mlp_ratio")

    def validate(self, prefix: str = "stage") -> None:
        _check_int(f"{prefix}.depth", self.depth, 1)
        _check_int(f"{prefix}.dim", self.dim, 1)
        _check_int(f"{prefix}.heads", self.heads, 1)
        _check_int(f"{prefix}.kernel_size", self.kernel_size, 1)
        _check_int(f"{prefix}.patch_size", self.patch_size, 1)
        _check_positive_number(f"{prefix}.mlp_ratio", self.mlp_ratio)
        if self.kind not in BLOCK_KINDS:
            _fail(f"{prefix}.kind", self.kind, f"unknown block kind; valid kinds: {', '.join(BLOCK_KINDS)}")
        if self.dim % self.heads:
            _fail(f"{prefix}.dim", self.dim, f"not divisible by {prefix}.heads={self.heads}")
        if self.kernel_size % 2 == 0:
            _fail(f"{prefix}.kernel_size", self.kernel_size, "must be odd so the window is centred")
        if int(self.dim * self.mlp_ratio) < 1:
            _fail(f"{prefix}.mlp_ratio", self.mlp_ratio, f"gives an empty MLP at dim {self.dim}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass(frozen=True)
class NetworkConfig:
    """A whole network: stages, input, classifier, and how dynamic and static affinities mix."""

    stages: tuple[StageConfig, ...]
    image_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    mixing: str = "tied"
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        # Accept plain sequences and dicts so that JSON and keyword construction both work.
        stages = tuple(s if isinstance(s, StageConfig) else _stage_from_mapping(s, i)
                       for i, s in enumerate(self.stages))
        object.__setattr__(self, "stages", stages)
        _store_float(self, "drop_path_rate")
        self.validate()

    def validate(self) -> None:
        if not self.stages:
            _fail("stages", list(self.stages), "need at least one stage")
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        _check_int("image_size", self.image_size, 1)
        _check_int("in_chans", self.in_chans, 1)
        _check_int("num_classes", self.num_classes, 1)
        if self.mixing not in MIXING_MODES:
            _fail("mixing", self.mixing, f"valid modes: {', '.join(MIXING_MODES)}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            _fail("drop_path_rate", rate, "must be a number in [0, 1)")
        if self.image_size % self.total_stride:
            _fail("image_size", self.image_size, f"not divisible by the total patch stride {self.total_stride}")

    @property
    def total_stride(self) -> int:
        return math.prod(s.patch_size for s in self.stages)

    def feature_sizes(self, image_size: int | None = None) -> list[int]:
        """Tokens per side after each stage's patch embedding."""
        side = self.image_size if image_size is None else image_size
        sizes = []
        for stage in self.stages:
            side //= stage.patch_size
            sizes.append(side)
        return sizes

    def describe(self) -> str:
        """One line for reports: per stage, depth x dim / heads, kind, kernel, MLP ratio
        (`2x64/2h conv k5 r4; 3x128/4h mix k3 r2`)."""
        return "; ".join(f"{s.depth}x{s.dim}/{s.heads}h {s.kind} k{s.kernel_size} r{s.mlp_ratio:g}"
                         for s in self.stages)

    def describe_short(self) -> str:
        """Depths, dims and kinds only, for a terminal column: `d3-4-8-3 w64-128-320-512 conv-conv-conv-mix`."""
        return (f"d{'-'.join(str(s.depth) for s in self.stages)} w{'-'.join(str(s.dim) for s in self.stages)} "
                f"{'-'.join(s.kind for s in self.stages)}")

    def replace(self, **changes: Any) -> "NetworkConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"stages": [dataclasses.asdict(s) for s in self.stages]}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NetworkConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"config: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {unknown}; valid fields: {sorted(known)}")
        if "stages" not in data:
            raise ValueError("config.stages: missing")
        stages = data["stages"]
        if isinstance(stages, (str, bytes)) or not hasattr(stages, "__iter__"):
            _fail("stages", stages, "must be a list of stage mappings")
        return cls(**dict(data))

    @classmethod
    def from_json(cls, text: str) -> "NetworkConfig":
        return cls.from_dict(json.loads(text))


def _stage_from_mapping(data: Any, index: int) -> StageConfig:
    if not isinstance(data, Mapping):
        _fail(f"stages[{index}]", data, "must be a mapping of stage fields")
    known = {f.name for f in dataclasses.fields(StageConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"stages[{index}]: unknown field(s) {unknown}; valid fields: {sorted(known)}")
    missing = sorted(f.name for f in dataclasses.fields(StageConfig)
                     if f.default is dataclasses.MISSING and f.name not in data)
    if missing:
        raise ValueError(f"stages[{index}]: missing field(s) {missing}")
    return StageConfig(**dict(data))


def as_config(config: "NetworkConfig | Mapping[str, Any] | str") -> NetworkConfig:
    """A NetworkConfig from itself, a dict (e.g. a loaded best.json) or a JSON string."""
    if isinstance(config, NetworkConfig):
        return config
    if isinstance(config, str):
        return NetworkConfig.from_json(config)
    return NetworkConfig.from_dict(config)

