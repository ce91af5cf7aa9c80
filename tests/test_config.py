import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from container import BLOCK_KINDS, NetworkConfig, StageConfig, build

VALID_STAGE = dict(depth=1, dim=16, heads=2, kind="conv", kernel_size=3, mlp_ratio=2.0, patch_size=2)


def network(stage=None, **top):
    return dict(stages=[VALID_STAGE, stage or VALID_STAGE], image_size=16, num_classes=4) | top


@st.composite
def stage_dicts(draw):
    heads = draw(st.integers(1, 4))
    return dict(depth=draw(st.integers(1, 2)), dim=heads * draw(st.sampled_from([4, 8])), heads=heads,
                kind=draw(st.sampled_from(sorted(BLOCK_KINDS))), kernel_size=draw(st.sampled_from([1, 3, 5])),
                mlp_ratio=draw(st.sampled_from([1.0, 2.0, 0.5])), patch_size=draw(st.sampled_from([1, 2])))


@settings(max_examples=25)
@given(stages=st.lists(stage_dicts(), min_size=1, max_size=3), mixing=st.sampled_from(["tied", "free"]))
def test_every_valid_config_builds_and_round_trips(stages, mixing):
    stride = 1
    for s in stages:
        stride *= s["patch_size"]
    config = NetworkConfig.from_dict(dict(stages=stages, image_size=4 * stride, num_classes=3, mixing=mixing))
    assert NetworkConfig.from_json(config.to_json()) == config
    model = build(config)
    assert model.head.out_features == 3


BAD_STAGE_FIELDS = [
    ("depth", 0, "must be >= 1"), ("depth", 1.5, "must be an integer"), ("dim", -8, "must be >= 1"),
    ("heads", 0, "must be >= 1"), ("kernel_size", 4, "must be odd"), ("kind", "transformer", "unknown block kind"),
    ("mlp_ratio", 0.0, "finite number > 0"), ("mlp_ratio", float("nan"), "finite number > 0"),
    ("patch_size", 0, "must be >= 1"), ("depth", True, "must be an integer"),
]


@pytest.mark.parametrize("name,value,reason", BAD_STAGE_FIELDS)
def test_a_bad_stage_field_is_named_with_its_reason(name, value, reason):
    with pytest.raises(ValueError, match=rf"stages\[1\]\.{name}=.*{reason}"):
        NetworkConfig.from_dict(network(VALID_STAGE | {name: value}))


@settings(max_examples=40)
@given(dim=st.integers(1, 512), heads=st.integers(1, 64))
def test_dim_not_divisible_by_heads_is_named(dim, heads):
    stage = VALID_STAGE | dict(dim=dim, heads=heads)
    if dim % heads:
        with pytest.raises(ValueError, match=rf"stages\[1\]\.dim={dim}: not divisible by stages\[1\]\.heads={heads}"):
            NetworkConfig.from_dict(network(stage))
    else:
        assert NetworkConfig.from_dict(network(stage)).stages[1].head_dim == dim // heads


@settings(max_examples=40)
@given(image_size=st.integers(1, 400), patches=st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_image_size_must_divide_by_the_total_stride(image_size, patches):
    stages = [VALID_STAGE | {"patch_size": p} for p in patches]
    stride = 1
    for p in patches:
        stride *= p
    data = dict(stages=stages, image_size=image_size)
    if image_size % stride:
        message = rf"image_size={image_size}: not divisible by the total patch stride {stride}"
        with pytest.raises(ValueError, match=message):
            NetworkConfig.from_dict(data)
    else:
        assert NetworkConfig.from_dict(data).total_stride == stride


@pytest.mark.parametrize("top,pattern", [
    (dict(mixing="sum"), r"mixing='sum'"),
    (dict(num_classes=0), r"num_classes=0"),
    (dict(drop_path_rate=1.0), r"drop_path_rate=1.0"),
    (dict(stages=[]), r"stages=\[\]: need at least one stage"),
    (dict(stages="conv"), r"stages='conv'"),
    (dict(depth=3), r"unknown field\(s\) \['depth'\]"),
])
def test_bad_top_level_fields_are_named(top, pattern):
    with pytest.raises(ValueError, match=pattern):
        NetworkConfig.from_dict(network() | top)


def test_missing_and_unknown_stage_fields_are_named():
    with pytest.raises(ValueError, match=r"stages\[0\]: missing field\(s\) \['dim'\]"):
        NetworkConfig.from_dict(dict(stages=[{"depth": 1}]))
    with pytest.raises(ValueError, match=r"stages\[0\]: unknown field\(s\) \['width'\]"):
        NetworkConfig.from_dict(dict(stages=[VALID_STAGE | {"width": 3}]))
    with pytest.raises(ValueError, match="config.stages: missing"):
        NetworkConfig.from_dict({})


def test_stage_config_is_plain_json():
    assert json.loads(json.dumps(NetworkConfig(stages=(StageConfig(1, 8),)).to_dict()))["stages"][0]["dim"] == 8


def test_an_int_for_a_float_field_is_the_same_architecture_and_the_same_json():
    ints = NetworkConfig.from_dict({"stages": [{"depth": 1, "dim": 8, "mlp_ratio": 4}], "drop_path_rate": 0})
    floats = NetworkConfig.from_dict({"stages": [{"depth": 1, "dim": 8, "mlp_ratio": 4.0}], "drop_path_rate": 0.0})
    assert ints == floats and ints.to_json(sort_keys=True) == floats.to_json(sort_keys=True)
    assert isinstance(ints.stages[0].mlp_ratio, float) and isinstance(ints.drop_path_rate, float)
    with pytest.raises(ValueError, match="mlp_ratio"):  # a bool is not taken for a number
        NetworkConfig.from_dict(network({"depth": 1, "dim": 8, "mlp_ratio": True}))
