"""container.optimize: the fast paths compute the reference's function, gradients and state_dict."""
import pytest
import torch
import torch.nn as nn

import container
import container.fast as fast_module
from container.fast import infer as fast_infer
from container.fast import precision as fast_precision
from container import BLOCK_KINDS, ContainerBlock, MixBlock, optimize
from tests.conftest import perturb_
from tests.seed import seed_module

STAGES = [(64, 56), (128, 28), (320, 14), (512, 7)]  # the four Container stages: dim @ tokens per side


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Correctness only: small ops on one thread don't wait at OpenMP barriers for a busy second core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute error relative to the largest reference magnitude."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def norm_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def perturb_net_(net: torch.nn.Module, seed: int = 0, gain: float = 0.5) -> torch.nn.Module:
    """perturb_, then every weight rescaled to `gain` / sqrt(fan_in): perturb_'s weights would make
    a deep network chaotic (fp32 rounding amplified block after block), whatever computes it."""
    perturb_(net, seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, container.TokenMixing)):
                fan_in = m.weight.shape[-1] if isinstance(m, container.TokenMixing) else m.weight[0].numel()
                m.weight.mul_(gain / (m.weight.std() * fan_in ** 0.5))
    return net


def assert_grads_match(module, reference, tol=1e-4):
    """Every parameter's gradient, to `tol` of the largest gradient of that parameter or 1e-2 of the
    largest overall (some are zero up to rounding, e.g. a bias that a training-mode BN cancels)."""
    ref = dict(reference.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.values())
    for name, p in module.named_parameters():
        expected = ref[name].grad
        bound = tol * max(expected.abs().max().item(), 1e-2 * scale)
        assert (p.grad - expected).abs().max().item() <= bound, name


def make_block(kind, mixing="tied", dim=32, heads=2, side=6, kernel_size=5, mlp_ratio=2.0, drop_path=0.0):
    block = ContainerBlock(dim, heads, kind, kernel_size, mlp_ratio, tokens=(side, side), mixing=mixing,
                           drop_path=drop_path)
    return perturb_(block).eval()


# --- eval: the folded inference path ----------------------------------------------------------

@pytest.mark.parametrize("mixing", ["tied", "free"])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_inference_path_matches_reference(kind, mixing):
    block = make_block(kind, mixing)
    fast = optimize(block)
    x = torch.randn(3, 32, 6, 6)
    with torch.inference_mode():
        expected, actual = block(x), fast(x)
    assert rel_err(actual, expected) < 1e-4
    assert actual.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", ["mix", "attn_mlp", "mhmlp"])  # dw conv, attention, both dense forms
def test_folding_is_exact_in_float64(kind):
    # In float64 the folded path must agree to rounding: the algebra (BN folds, the pos_embed centre
    # tap, the biases carried in the residual stream, beta in the static kernel) is exact.
    block = make_block(kind, "free").double()
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(optimize(block)(x), block(x), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim,side", STAGES, ids=[f"{d}@{s}" for d, s in STAGES])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_stage_shapes_fp32(kind, dim, side):
    # Dense token mixing at 56x56 owns 3136 x 3136 matrices; 28x28 keeps those cases quick.
    if BLOCK_KINDS[kind].needs_fixed_tokens and side == 56:
        side = 28
    torch.manual_seed(dim)
    block = perturb_(ContainerBlock(dim, dim // 32, kind, 5, 4.0, tokens=(side, side)), seed=dim).eval()
    x = torch.randn(1, dim, side, side)
    with torch.inference_mode():
        assert rel_err(optimize(block)(x), block(x)) < 1e-4


# bf16: autocast_policy="follow" computes the GEMMs in bf16 whatever the CPU (attention too where
# its kernel is fast in bf16); the error is relative to the fp32 reference, in the Frobenius norm.

@pytest.mark.parametrize("gemm_below_tokens", [0, 10**9], ids=["oneDNN conv", "addmm"])
def test_both_ways_of_running_the_1x1_convs_match_the_reference(monkeypatch, gemm_below_tokens):
    monkeypatch.setattr(fast_infer, "GEMM_BELOW_TOKENS", gemm_below_tokens)
    block = perturb_(MixBlock(64, 2), seed=1).eval()
    x = torch.randn(2, 64, 9, 9)
    with torch.inference_mode():
        assert rel_err(optimize(block)(x), block(x)) < 1e-4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert norm_rel_err(optimize(block, autocast_policy="follow")(x), block(x)) < 2e-2


def test_attention_dtype_follows_the_kernel_speed(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fast_module.attention_dtype(cuda, torch.bfloat16) == torch.bfloat16
    assert fast_module.attention_dtype(cpu, torch.float32) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert fast_module.attention_dtype(cpu, torch.bfloat16) == torch.float32
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert fast_module.attention_dtype(cpu, torch.bfloat16) == torch.bfloat16


def test_bf16_inference_runs_attention_in_attention_dtype():
    block = make_block("mix")
    x = torch.randn(2, 32, 6, 6)
    seen = []

    class SdpaDtypes(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if "scaled_dot_product" in str(func):
                seen.append(args[0].dtype)
            return func(*args, **(kwargs or {}))

    fast = optimize(block, autocast_policy="follow")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), SdpaDtypes():
        fast(x)
    assert seen == [fast_module.attention_dtype(x.device, torch.bfloat16)]


@pytest.mark.parametrize("dim,side", STAGES, ids=[f"{d}@{s}" for d, s in STAGES])
def test_stage_shapes_bf16_autocast(dim, side):
    block = perturb_(MixBlock(dim, dim // 32), seed=dim).eval()
    x = torch.randn(1, dim, side, side)
    fast = optimize(block, autocast_policy="follow")
    with torch.inference_mode():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = fast(x)
    assert actual.dtype == torch.float32  # the residual stream stays fp32, as in the reference
    assert norm_rel_err(actual, expected) < 2e-2
    assert 1e-4 < norm_rel_err(actual, expected)  # and bf16 was really used


@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_every_kind_under_bf16_autocast(kind):
    block = make_block(kind, "free")
    x = torch.randn(2, 32, 6, 6)
    with torch.inference_mode():
        expected = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = optimize(block, autocast_policy="follow")(x)
            auto = optimize(block)(x)
            fp32 = optimize(block, autocast_policy="fp32")(x)
    assert norm_rel_err(actual, expected) < 2e-2
    assert rel_err(fp32, expected) < 1e-4
    # "auto" computes in bf16 only where the CPU has fast bf16 GEMMs
    assert rel_err(auto, actual if fast_precision.native_low_precision(x.device, torch.bfloat16) else fp32) < 1e-6


def _update_in_place(fast: torch.nn.Module) -> None:
    for p in fast.parameters():  # e.g. an optimizer step
        p.mul_(1.1)
    fast.norm2.running_var.mul_(2.0)


def _replace_tensors(fast: torch.nn.Module) -> None:
    # the cache gathers its source tensors again only when the module structure changes: a parameter or
    # a buffer replaced by assignment must refold
    fast.conv1.weight = nn.Parameter(fast.conv1.weight * 0.5)
    fast.norm1.running_mean = fast.norm1.running_mean + 0.3


@pytest.mark.parametrize("change", [_update_in_place, _replace_tensors])
def test_folded_constants_follow_parameter_changes(change):
    block = make_block("mix")
    fast = optimize(block)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        fast(x)
        change(fast)
        block.load_state_dict(fast.state_dict())
        assert rel_err(fast(x), block(x)) < 1e-4


def test_folded_constants_follow_dtype_changes_and_network_parameters():
    # .to() swaps parameters' data and replaces buffers without registering them
    block = make_block("mix")
    fast = optimize(block)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        fast(x)
        fast.double()
        y = fast(x.double())
        assert y.dtype == torch.float64 and rel_err(y, block.double()(x.double())) < 1e-6
    net = perturb_net_(container.build(tiny_config("mix", "tied"))).eval()
    fast_net = optimize(net)
    xn = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        fast_net(xn)
        fast_net.head.bias = nn.Parameter(fast_net.head.bias + 1.0)
        net.load_state_dict(fast_net.state_dict())
        assert rel_err(fast_net(xn), net(xn)) < 1e-4


def test_channels_last_false_returns_contiguous_nchw():
    block = make_block("mix")
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        y = optimize(block, channels_last=False)(x)
    assert y.is_contiguous()
    assert rel_err(y, block(x)) < 1e-4


def test_inference_path_adds_no_layout_copies():
    # conv and attn read conv1's output in place (views); only the input's layout change may copy.
    for kind in ("conv", "attn"):
        fast = optimize(make_block(kind))
        x = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fast(x)  # folds the constants
            with torch.profiler.profile() as prof:
                fast(x)
        names = {e.name for e in prof.events()}
        assert not names & {"aten::clone", "aten::contiguous", "aten::permute_copy"}, (kind, names)


@pytest.mark.parametrize("kind", ["mlp", "mhmlp", "attn_mlp"])
def test_dense_kinds_refuse_another_token_grid(kind):
    fast = optimize(make_block(kind))
    with torch.no_grad(), pytest.raises(ValueError, match="built for 6x6"):
        fast(torch.randn(1, 32, 7, 7))


def test_optimize_refuses_other_modules():
    with pytest.raises(TypeError, match="ContainerBlock or a ContainerNet"):
        optimize(torch.nn.Linear(3, 3))


# --- training: the lean path ------------------------------------------------------------------

def _train_step(module, x, seed):
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # the same DropPath draws on both sides
    y = module(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y, x.grad


@pytest.mark.parametrize("mixing", ["tied", "free"])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_training_path_gradients_equal_the_reference(kind, mixing):
    block = make_block(kind, mixing, drop_path=0.3).train()
    fast = optimize(block, training=True)
    assert fast.training
    x = torch.randn(4, 32, 6, 6)
    y_ref, gx_ref = _train_step(block, x, seed=7)
    y, gx = _train_step(fast, x, seed=7)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(gx, gx_ref) < 1e-4
    assert_grads_match(fast, block)
    ref_buffers = dict(block.named_buffers())
    for name, buf in fast.named_buffers():
        if name in ref_buffers:  # BatchNorm running statistics and counters advance alike
            torch.testing.assert_close(buf, ref_buffers[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["mix", "attn_mhmlp", "conv"])
def test_training_path_is_exact_in_float64(kind):
    block = make_block(kind, "free").double().train()
    fast = optimize(block, training=True)
    x = torch.randn(2, 32, 6, 6, dtype=torch.float64)
    y_ref, gx_ref = _train_step(block, x, seed=3)
    y, gx = _train_step(fast, x, seed=3)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=1e-10)
    for (name, p), p_ref in zip(fast.named_parameters(), block.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=1e-9, msg=name)


def test_training_path_under_bf16_autocast_keeps_an_fp32_residual():
    block = make_block("mix").train()
    fast = optimize(block, training=True)
    x = torch.randn(2, 32, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, gx_ref = _train_step(block, x, seed=0)
        y, gx = _train_step(fast, x, seed=0)
    assert y.dtype == y_ref.dtype == torch.float32
    assert norm_rel_err(y, y_ref) < 2e-2 and norm_rel_err(gx, gx_ref) < 2e-2


def test_eval_with_autograd_uses_the_lean_path_with_exact_gradients():
    block = make_block("mix")
    fast = optimize(block)
    x = torch.randn(2, 32, 6, 6)
    y_ref, gx_ref = _train_step(block, x, seed=0)
    y, gx = _train_step(fast, x, seed=0)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(gx, gx_ref) < 1e-4
    assert_grads_match(fast, block)


# --- state_dict -----------------------------------------------------------------------------

def test_state_dict_is_the_reference_one_both_ways():
    block = make_block("attn_mlp", "free")
    fast = optimize(block)
    assert list(fast.state_dict()) == list(block.state_dict())
    other = make_block("attn_mlp", "free")
    perturb_(other, seed=5)
    fast.load_state_dict(other.state_dict(), strict=True)
    fresh = ContainerBlock(32, 2, "attn_mlp", 5, 2.0, tokens=(6, 6), mixing="free").eval()
    fresh.load_state_dict(fast.state_dict(), strict=True)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert rel_err(fast(x), other(x)) < 1e-4
        assert rel_err(fresh(x), other(x)) < 1e-4


def test_optimize_copies_unless_told_to_share():
    block = make_block("mix")
    copied, shared = optimize(block), optimize(block, share_parameters=True)
    assert copied.conv1.weight is not block.conv1.weight
    assert shared.conv1.weight is block.conv1.weight


def test_seed_mixblock_state_dict_loads_into_the_fast_block():
    """The seed's own MixBlock: its state_dict loads strictly into the fast block, whose output is the seed's."""
    seed = seed_module().MixBlock(64, 2, mlp_ratio=4.0)
    theirs = perturb_(seed).eval()
    fast = optimize(MixBlock(64, 2, mlp_ratio=4.0))
    fast.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 64, 7, 7)
    with torch.no_grad():
        assert rel_err(fast(x), theirs(x)) < 1e-4


# --- whole networks -----------------------------------------------------------------------------

def tiny_config(kind, mixing):
    stages = [dict(depth=1, dim=16, heads=2, kind="conv", kernel_size=3, mlp_ratio=2.0, patch_size=4),
              dict(depth=2, dim=32, heads=4, kind=kind, kernel_size=5, mlp_ratio=2.0, patch_size=2)]
    return {"stages": stages, "image_size": 32, "num_classes": 5, "mixing": mixing, "drop_path_rate": 0.2}


@pytest.mark.parametrize("mixing", ["tied", "free"])
@pytest.mark.parametrize("kind", list(BLOCK_KINDS))
def test_built_networks_match_in_eval_and_train(kind, mixing):
    net = perturb_net_(container.build(tiny_config(kind, mixing))).eval()
    fast = optimize(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert rel_err(fast(x), net(x)) < 1e-4
    net.train()
    fast.train()
    y_ref, gx_ref = _train_step(net, x, seed=1)
    y, gx = _train_step(fast, x, seed=1)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(gx, gx_ref) < 1e-4
    assert_grads_match(fast, net)


@pytest.mark.parametrize("name,side", [("container_light", 224), ("container", 128)])
def test_named_networks_match_fp32_and_bf16(name, side):
    net = perturb_net_(container.create_model(name, num_classes=10, image_size=side), seed=2).eval()
    fast = optimize(net)
    x = torch.randn(1, 3, side, side)
    with torch.inference_mode():
        expected = net(x)
        assert rel_err(fast(x), expected) < 1e-4
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x)
    assert norm_rel_err(low.float(), expected) < 2e-2
    assert list(fast.state_dict()) == list(net.state_dict())


def test_network_state_dict_loads_strictly_and_refolds():
    net = container.container_light(num_classes=10).eval()
    fast = optimize(net)
    other = perturb_net_(container.container_light(num_classes=10), seed=9).eval()
    fast.load_state_dict(other.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert rel_err(fast(x), other(x)) < 1e-4
        assert rel_err(fast.forward_features(x), other.forward_features(x)) < 1e-4
    net.load_state_dict(fast.state_dict(), strict=True)


def test_network_checks_its_input():
    fast = optimize(container.container_light(num_classes=10))
    with torch.no_grad(), pytest.raises(ValueError, match="total patch stride 32"):
        fast(torch.randn(1, 3, 100, 96))


# --- torch.compile ------------------------------------------------------------------------------

def test_compile_option_traces_every_path():
    # backend="eager" checks that dynamo traces the fast paths; inductor itself is the slow test.
    block = make_block("mix")
    fast = optimize(block, compile=True, compile_options={"backend": "eager", "fullgraph": True})
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        assert rel_err(fast(x), block(x)) < 1e-4
    y_ref, gx_ref = _train_step(block.train(), x, seed=0)
    y, gx = _train_step(fast.train(), x, seed=0)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(gx, gx_ref) < 1e-4


@pytest.mark.slow
def test_compile_with_inductor_matches_reference():
    torch._dynamo.reset()
    net = perturb_net_(container.build(tiny_config("mix", "tied"))).eval()
    fast = optimize(net, compile=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert rel_err(fast(x), net(x)) < 1e-4


@pytest.mark.parametrize("side, expected", [
    (6, {"mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise"}),
    (40, {"mkldnn::_convolution_pointwise_", "mkldnn::_convolution_pointwise"})])
def test_fp32_cpu_inference_runs_on_prepacked_onednn_ops(side, expected):
    # few tokens: GEMMs on the token view with fused GELU / residual add; many: in-place fused 1x1 convs
    block = make_block("conv")
    fast = optimize(block)
    x = torch.randn(1, 32, side, side)
    with torch.inference_mode():
        fast(x)  # packs the weights
        with torch.profiler.profile() as prof:
            y = fast(x)
        assert rel_err(y, block(x)) < 1e-4
    names = {e.key for e in prof.key_averages()}
    assert expected <= names, names
    assert not {"aten::gelu", "aten::gelu_", "aten::addmm"} & names  # fused, not separate passes


@pytest.mark.skipif(not fast_precision.native_low_precision(torch.device("cpu"), torch.bfloat16),
                    reason="this CPU has no native bf16")
@pytest.mark.parametrize("side, expected", [
    (6, {"mkldnn::_linear_pointwise", "mkldnn::_convolution_pointwise"}),
    (40, {"mkldnn::_convolution_pointwise"})])
def test_bf16_cpu_inference_runs_on_prepacked_onednn_ops(side, expected):
    # bf16 GEMMs on packed bf16 weights, GELU fused; the residual adds stay apart on the fp32 stream
    block = make_block("mix")
    fast = optimize(block)
    x = torch.randn(1, 32, side, side)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast(x)
        with torch.profiler.profile() as prof:
            y = fast(x)
    assert y.dtype == torch.float32
    with torch.inference_mode():
        assert 1e-4 < norm_rel_err(y, block(x)) < 2e-2
    names = {e.key for e in prof.key_averages()}
    assert expected <= names, names
    assert not {"aten::gelu", "aten::gelu_", "aten::addmm", "aten::convolution"} & names
