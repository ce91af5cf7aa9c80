import copy

import pytest
import torch

import container
from container import BLOCK_KINDS, CBlock, ContainerBlock, MixBlock
from tests import reference
from tests.conftest import perturb_
from tests.seed import seed_module


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dim,heads,side", [(32, 2, 7), (64, 4, 5), (48, 3, 6)])
def test_mixblock_matches_explicit_reference(train, dim, heads, side):
    # float64 on both sides: the comparison is of the arithmetic, not of fp32 summation order.
    block = perturb_(MixBlock(dim, heads, mlp_ratio=2.0)).double().train(train)
    x = torch.randn(2, dim, side, side, dtype=torch.float64)
    expected = reference.mix_block({k: v.clone() for k, v in block.state_dict().items()}, x, heads, train)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cblock_matches_explicit_reference(train):
    block = perturb_(CBlock(24, mlp_ratio=3.0)).double().train(train)
    x = torch.randn(3, 24, 6, 5, dtype=torch.float64)
    expected = reference.c_block({k: v.clone() for k, v in block.state_dict().items()}, x, train)
    torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-10)


def test_mixblock_keeps_the_seeds_parameters():
    block = MixBlock(64, 2)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes["conv1.weight"] == (192, 64, 1, 1) and shapes["conv1.bias"] == (192,)  # bias always
    assert shapes["conv.weight"] == (64, 1, 5, 5)  # the 5x5 static branch, on V
    assert shapes["pos_embed.weight"] == (64, 1, 3, 3)
    assert shapes["sa_weight"] == (1,) and block.sa_weight.item() == 0.0
    assert isinstance(block.norm1, torch.nn.BatchNorm2d) and isinstance(block.norm2, torch.nn.BatchNorm2d)
    assert not any(k.startswith("attn.") for k in shapes)  # attention itself has no parameters


def test_cblock_names_its_depthwise_conv_attn():
    shapes = {k: tuple(v.shape) for k, v in CBlock(64).state_dict().items()}
    assert shapes["attn.weight"] == (64, 1, 5, 5)
    assert shapes["conv1.weight"] == (64, 64, 1, 1)
    assert "sa_weight" not in shapes and not any(k.startswith("conv.") for k in shapes)


def test_drop_path_is_identity_in_eval_and_drops_whole_samples_in_train():
    block = perturb_(MixBlock(16, 2, drop_path=0.5)).eval()
    without = copy.deepcopy(block)
    without.drop_path = torch.nn.Identity()
    x = torch.randn(4, 16, 4, 4)
    torch.testing.assert_close(block(x), without(x))
    drop = block.drop_path.train()
    y = drop(torch.ones(256, 3, 2, 2))
    per_sample = y.flatten(1)
    assert torch.all(per_sample == per_sample[:, :1])  # one decision per sample
    assert set(per_sample[:, 0].tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1 / keep


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_seed_state_dict_loads_strictly_and_outputs_match(train):
    seed = seed_module()
    theirs = perturb_(seed.MixBlock(64, 2, mlp_ratio=4.0)).train(train)
    ours = MixBlock(64, 2, mlp_ratio=4.0).train(train)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 64, 7, 7)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-5)


# --- the unified form: token mixing equals its explicit affinity matrices applied to V -----------

def make_block(kind, mixing="tied", dim=16, heads=4, side=5, kernel_size=3):
    return perturb_(ContainerBlock(dim, heads, kind, kernel_size, mlp_ratio=2.0, tokens=(side, side),
                                   mixing=mixing)).eval()


@pytest.mark.parametrize("mixing", ["tied", "free"])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_token_mixing_equals_affinity_matrices_applied_to_v(kind, mixing):
    block = make_block(kind, mixing)
    qkv = torch.randn(2, block.conv1.out_channels, 5, 5)
    torch.testing.assert_close(block.token_mixing(qkv), block.apply_affinity(qkv), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,side", [(3, 4), (5, 6), (7, 5)])
def test_depthwise_conv_is_its_banded_zero_padded_matrix(k, side):
    conv = perturb_(container.DepthwiseConv(6, k))
    a = conv.matrices(side, side)
    torch.testing.assert_close(a, reference.banded_matrix(conv.weight[:, 0].detach(), side, side))
    v = torch.randn(2, 6, side, side)
    with torch.no_grad():
        torch.testing.assert_close(conv(v) - conv.bias.view(1, -1, 1, 1), reference.apply_per_channel(a, v),
                                   rtol=1e-5, atol=1e-5)
    # Banded: a token reaches only tokens within the k x k window around it.
    y, x = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    far = ((y.flatten()[:, None] - y.flatten()[None]).abs() > k // 2) | \
          ((x.flatten()[:, None] - x.flatten()[None]).abs() > k // 2)
    assert torch.all(a[:, far] == 0)


def test_attention_affinity_is_row_stochastic_and_input_dependent():
    block = make_block("attn")
    x1, x2 = torch.randn(2, 1, 16, 5, 5)
    a1, a2 = block.affinity(x1)["dynamic"], block.affinity(x2)["dynamic"]
    assert a1.shape == (1, 4, 25, 25)
    torch.testing.assert_close(a1.sum(-1), torch.ones(1, 4, 25))
    assert not torch.allclose(a1, a2)


@pytest.mark.parametrize("kind,groups", [("mlp", 1), ("mhmlp", 4), ("conv", 16)])
def test_static_affinities_do_not_depend_on_the_input(kind, groups):
    block = make_block(kind)
    a1, a2 = (block.affinity(torch.randn(1, 16, 5, 5))["static"] for _ in range(2))
    assert a1.shape == (groups, 25, 25)
    torch.testing.assert_close(a1, a2)


def test_tied_mixing_is_sigmoid_and_free_mixing_learns_alpha_and_beta():
    tied = make_block("mix")
    alpha, beta = tied.mix_weights()
    torch.testing.assert_close(alpha, torch.sigmoid(tied.sa_weight))
    torch.testing.assert_close(alpha + beta, torch.ones(1))
    free = make_block("attn_mlp", "free")
    assert {"alpha", "beta"} <= dict(free.named_parameters()).keys()
    free.train()
    free(torch.randn(2, 16, 5, 5)).sum().backward()
    assert free.alpha.grad is not None and free.beta.grad is not None


@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_every_kind_runs_forward_and_backward(kind):
    block = ContainerBlock(16, 4, kind, 3, 2.0, tokens=(6, 6), drop_path=0.1).train()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)


@pytest.mark.parametrize("kind", ["mlp", "mhmlp", "attn_mlp"])
def test_dense_affinities_refuse_another_token_grid(kind):
    block = ContainerBlock(16, 4, kind, 3, tokens=(6, 6))
    with pytest.raises(ValueError, match="built for 6x6"):
        block(torch.randn(1, 16, 7, 7))
    with pytest.raises(ValueError, match="tokens"):
        ContainerBlock(16, 4, kind, 3)


@pytest.mark.parametrize("kwargs,field", [
    (dict(dim=30, heads=4), "block.dim"),
    (dict(kernel_size=4), "block.kernel_size"),
    (dict(kind="transformer"), "block.kind"),
    (dict(mixing="sum"), "mixing"),
])
def test_bad_block_arguments_name_the_field(kwargs, field):
    args = dict(dim=32, heads=4, kind="mix", kernel_size=5) | kwargs
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ContainerBlock(**args)
