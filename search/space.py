"""The search space: which NetworkConfigs the search may propose, and how a trial picks one.

A space is a list of stage spaces plus the fixed network fields. Each stage field is either a
fixed value or a set of choices (`depth` is a [min, max] range). A space loads from JSON or YAML,
takes `KEY=VALUE` overrides from the command line, and a bad value raises `SpaceError` naming the
field (`space.stages[2].depth=[5, 3]: min 5 > max 3`).

Heads are not searched directly: a stage picks `head_dim` from a small set and gets
`heads = dim // head_dim` (the largest listed head_dim that divides `dim` when the picked one
does not), so every proposal has dims divisible by heads.
"""
from __future__ import annotations

import copy
import json
import math
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from bench.kit import read_document
from bench.targets import BenchInputError
from container import BLOCK_KINDS, MIXING_MODES, NetworkConfig, StageConfig
from container.kinds import block_kind


class SearchInputError(ValueError):
    """Bad input to the search (a flag, a space file, a budget): the CLI prints it on one line, exits 2."""


class SpaceError(SearchInputError):
    """A search space that cannot be searched; the message names the field."""


def _fail(name: str, value: Any, reason: str) -> None:
    raise SpaceError(f"space.{name}={_show(value)}: {reason}")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value) if isinstance(value, (list, dict, str)) else repr(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choices(name: str, value: Any) -> tuple[Any, ...]:
    """A field given as one value or a list of choices, as a non-empty tuple without repeats."""
    if isinstance(value, (list, tuple)):
        if not value:
            _fail(name, value, "empty list of choices")
        out: list[Any] = []
        for v in value:
            if v not in out:
                out.append(v)
        return tuple(out)
    return (value,)


@dataclass(frozen=True)
class StageSpace:
    """The choices for one stage. `depth` is an inclusive (min, max) range; the rest are choice sets."""

    depth: tuple[int, int]
    dim: tuple[int, ...]
    head_dim: tuple[int, ...] = (16, 32)
    kernel_size: tuple[int, ...] = (3, 5, 7)
    kind: tuple[str, ...] = ("conv",)
    mlp_ratio: tuple[float, ...] = (4.0,)
    patch_size: int = 2

    @classmethod
    def from_dict(cls, data: Any, prefix: str) -> "StageSpace":
        if not isinstance(data, Mapping):
            _fail(prefix, data, "must be a mapping of stage fields")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            _fail(f"{prefix}.{unknown[0]}", data[unknown[0]],
                  f"unknown stage field; valid fields: {', '.join(sorted(known))}")
        for required in ("depth", "dim"):
            if required not in data:
                raise SpaceError(f"space.{prefix}.{required}: missing")
        depth = data["depth"]
        if isinstance(depth, (list, tuple)):
            if len(depth) != 2:
                _fail(f"{prefix}.depth", depth, "must be one integer or a [min, max] range")
            depth = tuple(depth)
        else:
            depth = (depth, depth)
        kwargs: dict[str, Any] = {"depth": depth}
        for name in ("dim", "head_dim", "kernel_size", "kind", "mlp_ratio"):
            if name in data:
                kwargs[name] = _choices(f"{prefix}.{name}", data[name])
        if "patch_size" in data:
            kwargs["patch_size"] = data["patch_size"]
        stage = cls(**kwargs)
        stage.validate(prefix)
        return stage

    def validate(self, prefix: str) -> None:
        lo, hi = self.depth
        for v in (lo, hi):
            if not _is_int(v) or v < 1:
                _fail(f"{prefix}.depth", list(self.depth), "depths must be integers >= 1")
        if lo > hi:
            _fail(f"{prefix}.depth", list(self.depth), f"min {lo} > max {hi}")
        for name, values in (("dim", self.dim), ("head_dim", self.head_dim)):
            if not values:
                _fail(f"{prefix}.{name}", [], "empty list of choices")
            for v in values:
                if not _is_int(v) or v < 1:
                    _fail(f"{prefix}.{name}", values, "choices must be integers >= 1")
        for v in self.kernel_size:
            if not _is_int(v) or v < 1 or v % 2 == 0:
                _fail(f"{prefix}.kernel_size", self.kernel_size, "choices must be odd integers >= 1")
        for v in self.kind:
            if v not in BLOCK_KINDS:
                _fail(f"{prefix}.kind", self.kind, f"unknown block kind {v!r}; valid kinds: {', '.join(BLOCK_KINDS)}")
        for v in self.mlp_ratio:
            if not _is_number(v) or v <= 0:
                _fail(f"{prefix}.mlp_ratio", self.mlp_ratio, "choices must be finite numbers > 0")
            for d in self.dim:
                if int(d * v) < 1:
                    _fail(f"{prefix}.mlp_ratio", self.mlp_ratio, f"{v} gives an empty MLP at dim {d}")
        if not _is_int(self.patch_size) or self.patch_size < 1:
            _fail(f"{prefix}.patch_size", self.patch_size, "must be an integer >= 1")
        for d in self.dim:
            if not any(d % h == 0 for h in self.head_dim):
                _fail(f"{prefix}.dim", self.dim,
                      f"dim {d} is not divisible by any head_dim in {list(self.head_dim)}")

    def heads_for(self, dim: int, head_dim: int) -> int:
        """Heads for `dim`: dim // head_dim, or with the largest listed head_dim that divides dim."""
        if dim % head_dim:
            head_dim = max(h for h in self.head_dim if dim % h == 0)
        return max(1, dim // head_dim)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# Container-Light (depths 3/4/8/3, dims 64/128/320/512, conv conv conv mix, mlp 8/8/4/4) sits at
# the top corner of this space; the bottom corner is a ~1M-parameter network, roughly 10x faster.
DEFAULT_STAGES: tuple[StageSpace, ...] = (
    StageSpace(depth=(1, 3), dim=(32, 48, 64), kind=("conv",), mlp_ratio=(4.0, 8.0), patch_size=4),
    StageSpace(depth=(1, 4), dim=(64, 96, 128), kind=("conv", "mix"), mlp_ratio=(4.0, 8.0), patch_size=2),
    StageSpace(depth=(1, 8), dim=(128, 192, 256, 320), kind=("conv", "mix", "attn"), mlp_ratio=(2.0, 4.0),
               patch_size=2),
    StageSpace(depth=(1, 4), dim=(256, 384, 512), kind=("conv", "mix", "attn", "attn_mlp"),
               mlp_ratio=(2.0, 4.0), patch_size=2),
)

_PARAM_FIELDS = ("depth", "dim", "head_dim", "kernel_size", "kind", "mlp_ratio")


@dataclass(frozen=True)
class SearchSpace:
    stages: tuple[StageSpace, ...] = DEFAULT_STAGES
    num_classes: int = 1000
    in_chans: int = 3
    mixing: str = "tied"

    # --- construction ---------------------------------------------------------------------------

    @classmethod
    def default(cls) -> "SearchSpace":
        return cls()

    @classmethod
    def from_dict(cls, data: Any) -> "SearchSpace":
        if not isinstance(data, Mapping):
            raise SpaceError(f"space: expected a mapping with a 'stages' list, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            _fail(unknown[0], data[unknown[0]], f"unknown field; valid fields: {', '.join(sorted(known))}")
        stages = data.get("stages")
        if stages is None:
            raise SpaceError("space.stages: missing")
        if not isinstance(stages, (list, tuple)) or not stages:
            _fail("stages", stages, "must be a non-empty list of stage spaces")
        kwargs = {k: data[k] for k in ("num_classes", "in_chans", "mixing") if k in data}
        space = cls(stages=tuple(StageSpace.from_dict(s, f"stages[{i}]") for i, s in enumerate(stages)), **kwargs)
        space.validate()
        return space

    @classmethod
    def load(cls, path: str | Path) -> "SearchSpace":
        """A space from a JSON or YAML file."""
        try:
            data = read_document(path, "--space")
        except BenchInputError as e:
            raise SearchInputError(str(e)) from None
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [s.to_dict() for s in self.stages], "num_classes": self.num_classes,
                "in_chans": self.in_chans, "mixing": self.mixing}

    def with_overrides(self, assignments: Sequence[str]) -> "SearchSpace":
        """Apply `KEY=VALUE` overrides, VALUE in YAML/JSON: `stages[2].kind=[conv,attn]`, `stages[0].depth=[1,2]`,
        `kernel_size=[3,5]` (a stage field without an index sets it in every stage), `num_classes=10`."""
        data = copy.deepcopy(self.to_dict())
        for text in assignments:
            key, sep, raw = text.partition("=")
            key = key.strip()
            if not sep or not key:
                raise SearchInputError(f"--space-set {text!r}: expected KEY=VALUE, e.g. 'stages[2].kind=[conv,attn]'")
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                raise SearchInputError(f"--space-set {text!r}: VALUE is not valid YAML/JSON") from None
            match = re.fullmatch(r"stages\[(\d+)\]\.(\w+)", key)
            if match:
                index, name = int(match.group(1)), match.group(2)
                if index >= len(data["stages"]):
                    raise SpaceError(f"space.stages[{index}]: the space has {len(data['stages'])} stages")
                data["stages"][index][name] = value
            elif key in StageSpace.__dataclass_fields__:
                for stage in data["stages"]:
                    stage[key] = value
            else:
                data[key] = value
        return SearchSpace.from_dict(data)

    # --- validation ---------------------------------------------------------------------------------

    def validate(self, image_size: int | None = None) -> None:
        for i, stage in enumerate(self.stages):
            stage.validate(f"stages[{i}]")
        for name in ("num_classes", "in_chans"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                _fail(name, v, "must be an integer >= 1")
        if self.mixing not in MIXING_MODES:
            _fail("mixing", self.mixing, f"valid modes: {', '.join(MIXING_MODES)}")
        if image_size is not None:
            stride = self.total_stride
            if not _is_int(image_size) or image_size < 1 or image_size % stride:
                raise SpaceError(f"--image-size {image_size}: not divisible by the space's total patch stride "
                                 f"{stride} (stages[*].patch_size)")
            # Build the two corners so that anything else NetworkConfig rejects is caught now.
            for config in (self.smallest(image_size), self.largest(image_size)):
                try:
                    config.validate()
                except ValueError as e:
                    raise SpaceError(f"space: {e}") from None

    @property
    def total_stride(self) -> int:
        return math.prod(s.patch_size for s in self.stages)

    # --- proposals --------------------------------------------------------------------------------

    def param_name(self, stage: int, name: str) -> str:
        return f"s{stage + 1}_{name}"

    def suggest(self, trial: Any, image_size: int) -> NetworkConfig:
        """The network a trial proposes. Fixed fields are not suggested, so they add nothing to the
        sampler's space; everything else is an Optuna parameter named `s<stage>_<field>`."""
        stages = []
        for i, s in enumerate(self.stages):
            lo, hi = s.depth
            depth = trial.suggest_int(self.param_name(i, "depth"), lo, hi) if lo < hi else lo
            values: dict[str, Any] = {"depth": depth}
            for name in _PARAM_FIELDS[1:]:
                choices = getattr(s, name)
                values[name] = (trial.suggest_categorical(self.param_name(i, name), list(choices))
                                if len(choices) > 1 else choices[0])
            stages.append(self._stage(s, values))
        return self._network(stages, image_size)

    def config_from_params(self, params: Mapping[str, Any], image_size: int) -> NetworkConfig:
        """The network that a trial with these Optuna params proposed."""
        stages = []
        for i, s in enumerate(self.stages):
            values = {name: params.get(self.param_name(i, name), self._fixed(s, name)) for name in _PARAM_FIELDS}
            stages.append(self._stage(s, values))
        return self._network(stages, image_size)

    def nearest_params(self, config: NetworkConfig) -> dict[str, Any] | None:
        """The Optuna params of the network in the space nearest to `config`, stage by stage: depth clipped to the
        range; dim, head_dim, kernel size and MLP ratio the nearest choice (the smaller on a tie); the block kind
        kept where the stage allows it, else the stage's first. None when the stage counts differ. What
        `study.enqueue_trial` takes to start a study from a hand-designed network outside the space."""
        if len(config.stages) != len(self.stages):
            return None
        params: dict[str, Any] = {}
        for i, (s, c) in enumerate(zip(self.stages, config.stages)):
            values = {"depth": min(max(c.depth, s.depth[0]), s.depth[1]),
                      "dim": _nearest(s.dim, c.dim), "head_dim": _nearest(s.head_dim, c.dim // c.heads),
                      "kernel_size": _nearest(s.kernel_size, c.kernel_size),
                      "kind": c.kind if c.kind in s.kind else s.kind[0],
                      "mlp_ratio": _nearest(s.mlp_ratio, c.mlp_ratio)}
            if s.depth[0] < s.depth[1]:
                params[self.param_name(i, "depth")] = values["depth"]
            for name in _PARAM_FIELDS[1:]:
                if len(getattr(s, name)) > 1:
                    params[self.param_name(i, name)] = values[name]
        return params

    @staticmethod
    def _fixed(s: StageSpace, name: str) -> Any:
        return s.depth[0] if name == "depth" else getattr(s, name)[0]

    def _stage(self, s: StageSpace, v: Mapping[str, Any]) -> StageConfig:
        dim = int(v["dim"])
        return StageConfig(depth=int(v["depth"]), dim=dim, heads=s.heads_for(dim, int(v["head_dim"])),
                           kind=str(v["kind"]), kernel_size=int(v["kernel_size"]), mlp_ratio=float(v["mlp_ratio"]),
                           patch_size=s.patch_size)

    def _network(self, stages: list[StageConfig], image_size: int) -> NetworkConfig:
        return NetworkConfig(stages=tuple(stages), image_size=image_size, in_chans=self.in_chans,
                             num_classes=self.num_classes, mixing=self.mixing)

    def smallest(self, image_size: int) -> NetworkConfig:
        """The cheapest corner: fewest, narrowest blocks with the cheapest kind, kernel and MLP."""
        stages, side = [], image_size
        for s in self.stages:
            side //= s.patch_size
            dim = min(s.dim)
            kind = min(s.kind, key=lambda k: (_kind_cost(k, dim, side * side, min(s.kernel_size)), k))
            stages.append(self._stage(s, {"depth": s.depth[0], "dim": dim, "head_dim": max(s.head_dim),
                                          "kernel_size": min(s.kernel_size), "kind": kind,
                                          "mlp_ratio": min(s.mlp_ratio)}))
        return self._network(stages, image_size)

    def largest(self, image_size: int) -> NetworkConfig:
        """The most expensive corner (by the same rough cost model)."""
        stages, side = [], image_size
        for s in self.stages:
            side //= s.patch_size
            dim = max(s.dim)
            kind = max(s.kind, key=lambda k: (_kind_cost(k, dim, side * side, max(s.kernel_size)), k))
            stages.append(self._stage(s, {"depth": s.depth[1], "dim": dim, "head_dim": min(s.head_dim),
                                          "kernel_size": max(s.kernel_size), "kind": kind,
                                          "mlp_ratio": max(s.mlp_ratio)}))
        return self._network(stages, image_size)

    def size(self) -> int:
        """How many distinct configs the space holds (head_dim choices counted as given)."""
        n = 1
        for s in self.stages:
            n *= (s.depth[1] - s.depth[0] + 1) * len(s.dim) * len(s.head_dim) * len(s.kernel_size) \
                * len(s.kind) * len(s.mlp_ratio)
        return n


def _nearest(choices: Sequence[Any], value: float) -> Any:
    return min(choices, key=lambda c: (abs(c - value), c))


def _kind_cost(kind: str, dim: int, tokens: int, kernel: int) -> float:
    """Multiply-adds of one block's token mixing (plus its extra QKV projection), to order kinds by cost."""
    k = block_kind(kind)
    cost = 0.0
    if k.dynamic:
        cost += 2 * tokens * tokens * dim + 2 * tokens * dim * dim
    if k.static == "conv":
        cost += tokens * dim * kernel * kernel
    elif k.static in ("mlp", "mhmlp"):
        cost += tokens * tokens * dim
    return cost



# --- seeded samples without an Optuna study (the predictor's sets, the proxy validation) ---


class RandomTrial:
    """Just enough of an Optuna trial for `SearchSpace.suggest`: uniform choices from a seeded RNG."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.params: dict[str, Any] = {}

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.params[name] = value = self.rng.randint(low, high)
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.params[name] = value = choices[self.rng.randrange(len(choices))]
        return value


def sample_configs(space: SearchSpace, n: int, seed: int, image_size: int, *,
                   exclude: Iterable[str] = (), max_tries: int | None = None) -> list[NetworkConfig]:
    """`n` distinct configs drawn uniformly (per field) from `space`; configs whose JSON is in `exclude`
    are skipped, so an evaluation set never repeats a fitting set."""
    rng = random.Random(seed)
    seen = set(exclude)
    out: list[NetworkConfig] = []
    tries = 0
    limit = max_tries if max_tries is not None else 100 * n + 100
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(f"could only draw {len(out)} distinct configs of {n} from the space "
                             f"(after {limit} draws); the space is too small")
        config = space.suggest(RandomTrial(rng), image_size)
        key = config.to_json(sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        out.append(config)
    return out


def config_id(config: NetworkConfig) -> str:
    """The key `sample_configs(exclude=...)` compares."""
    return config.to_json(sort_keys=True)

__all__ = ["DEFAULT_STAGES", "RandomTrial", "SearchInputError", "SearchSpace", "SpaceError", "StageSpace", "config_id",
           "sample_configs"]
