import ast
import json
from pathlib import Path

import pytest
import torch

import container
from container import NetworkConfig, StageConfig, build

REFERENCE_KEYS = Path(__file__).parent / "data" / "container_light_state_dict.tsv"


def published_shapes():
    rows = REFERENCE_KEYS.read_text().splitlines()[1:]
    return {key: shape for key, shape in (row.split("\t") for row in rows)}


def test_container_light_has_the_published_state_dict_and_parameter_count():
    model = container.container_light()
    ours = {k: str(tuple(v.shape)) for k, v in model.state_dict().items()}
    assert ours == published_shapes()
    assert sum(p.numel() for p in model.parameters()) == 20_633_643


def test_a_checkpoint_in_the_published_layout_loads_strictly_into_its_places():
    """A state_dict made from the published key list alone (not from our model) loads strictly, and every
    tensor lands under its published key: a renamed, missing or reshaped key fails here."""
    generator = torch.Generator().manual_seed(0)
    published = {key: torch.randn(ast.literal_eval(shape), generator=generator) if shape != "()" else torch.tensor(7)
                 for key, shape in published_shapes().items()}
    model = container.container_light()
    model.load_state_dict(published, strict=True)
    loaded = model.state_dict()
    for key, tensor in published.items():
        torch.testing.assert_close(loaded[key], tensor.to(loaded[key].dtype), rtol=0, atol=0)


def test_container_uses_mixblock_in_every_stage():
    model = container.container()
    kinds = {block.kind.name for _, blocks in model.stages() for block in blocks}
    assert kinds == {"mix"}
    stage1 = model.blocks1[0]
    assert stage1.conv1.out_channels == 3 * 64 and stage1.heads == 2  # head_dim 32


def test_container_light_stage_kinds_and_widths():
    config = container.container_light_config()
    assert [s.kind for s in config.stages] == ["conv", "conv", "conv", "mix"]
    assert [s.dim for s in config.stages] == [64, 128, 320, 512]
    assert [s.depth for s in config.stages] == [3, 4, 8, 3]
    assert [s.patch_size for s in config.stages] == [4, 2, 2, 2]
    assert config.feature_sizes() == [56, 28, 14, 7]


@pytest.mark.parametrize("side", [224, 160, 96, 32])
def test_any_input_divisible_by_the_total_stride_works(side):
    model = container.container_light(num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 10)


def test_input_not_divisible_by_the_stride_is_a_clear_error():
    model = container.container_light(num_classes=10)
    with pytest.raises(ValueError, match="total patch stride 32"):
        model(torch.randn(1, 3, 100, 96))


def tiny_config(**stage_overrides):
    stages = [dict(depth=1, dim=16, heads=2, kind="conv", kernel_size=3, mlp_ratio=2.0, patch_size=4),
              dict(depth=1, dim=32, heads=4, kind="mix", kernel_size=5, mlp_ratio=2.0, patch_size=2)]
    stages[1].update(stage_overrides)
    return {"stages": stages, "image_size": 32, "num_classes": 5}


@pytest.mark.parametrize("kind", list(container.BLOCK_KINDS))
@pytest.mark.parametrize("mixing", ["tied", "free"])
def test_build_every_kind_from_a_plain_dict_and_train_a_step(kind, mixing):
    model = build(tiny_config(kind=kind) | {"mixing": mixing, "drop_path_rate": 0.1})
    x = torch.randn(2, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


def test_config_round_trips_through_json_and_builds_the_same_network():
    config = container.container_light_config(num_classes=7, image_size=160, mixing="free")
    restored = NetworkConfig.from_json(json.dumps(json.loads(config.to_json())))
    assert restored == config
    assert isinstance(restored.stages[0], StageConfig)
    torch.manual_seed(0)
    a = build(config)
    torch.manual_seed(0)
    b = build(json.loads(config.to_json()))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_named_models_registry():
    assert {"container", "container_light"} <= set(container.list_models())
    assert container.create_model("container_light", num_classes=3).head.out_features == 3
    with pytest.raises(ValueError, match="valid networks: container, container_light"):
        container.model_config("resnet50")


def test_drop_path_rate_rises_linearly_over_depth():
    model = container.container_light(drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for _, blocks in model.stages() for b in blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3)
    assert rates == sorted(rates) and len(rates) == 18
