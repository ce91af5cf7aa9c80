"""bench's figures against independent references: analytic FLOPs, known allocations, known samples."""
import math

import pytest
import torch
import torch.nn.functional as F

import bench
import container
from bench import BlockTarget, Roofline, StopRule, count_flops, cpu_allocator_peak


def analytic_block_macs(kind: str, dim: int, side: int, heads: int, k: int, ratio: float, batch: int) -> dict:
    """Multiply-adds of one ContainerBlock forward, op by op, from the block's definition."""
    spec = container.BLOCK_KINDS[kind]
    n, c = side * side, dim
    macs = {
        "pos_embed (3x3 depthwise)": 9 * c * n,
        "conv1 (1x1)": c * (3 * c if spec.dynamic else c) * n,
        "conv2 (1x1)": c * c * n,
        "mlp (two 1x1)": 2 * c * int(c * ratio) * n,
    }
    if spec.dynamic:
        macs["attention: QK^T and AV"] = 2 * n * n * c  # heads * N * N * head_dim, twice
    if spec.static == "conv":
        macs["static depthwise conv"] = k * k * c * n
    elif spec.static in ("mlp", "mhmlp"):
        macs["static dense token mixing"] = n * n * c
    shared = batch * sum(macs.values())
    batch_norms = batch * 2 * (2 * c * n)  # fvcore: 2 per element for each of the two inference BatchNorms
    return {"shared": shared, "fvcore_total": shared + batch_norms}


@pytest.mark.parametrize("kind", list(container.BLOCK_KINDS))
@pytest.mark.parametrize("dim,side,heads,k", [(32, 6, 2, 5), (64, 4, 4, 3), (48, 5, 3, 7)])
def test_block_flops_match_the_analytic_formula(kind, dim, side, heads, k):
    block = container.ContainerBlock(dim, heads, kind, k, mlp_ratio=3.0, tokens=(side, side)).eval()
    counted = count_flops(block, torch.randn(2, dim, side, side))
    expected = analytic_block_macs(kind, dim, side, heads, k, 3.0, batch=2)
    assert counted.macs_fvcore == expected["fvcore_total"]
    assert counted.flops_fvcore == 2 * expected["fvcore_total"]
    assert counted.flops_flopcounter == 2 * expected["shared"]  # FlopCounterMode counts no BatchNorm
    assert counted.crosscheck_rel_diff == 0.0
    if container.BLOCK_KINDS[kind].dynamic:
        assert "softmax" in counted.unattributed_fvcore  # recorded, not silently dropped


@pytest.mark.parametrize("groups", [1, 8, 64], ids=["dense", "grouped", "depthwise"])
def test_a_conv_backward_costs_one_forward_per_gradient(groups):
    from bench.flops import count_training_flops
    conv = torch.nn.Conv2d(64, 64, 5, padding=2, groups=groups)
    x = torch.randn(2, 64, 7, 7)
    forward = 2 * 2 * 49 * 64 * (64 // groups) * 25
    assert count_training_flops(conv, x) == forward + forward  # the weight's gradient; x needs none
    assert count_training_flops(conv, x.requires_grad_()) == 3 * forward


@pytest.mark.parametrize("kind", list(container.BLOCK_KINDS))
def test_block_training_flops_are_three_forwards_less_the_input_gradient(kind):
    from bench.flops import count_training_flops
    dim, side, batch = 32, 6, 2
    block = container.ContainerBlock(dim, 2, kind, 5, mlp_ratio=3.0, tokens=(side, side))
    x = torch.randn(batch, dim, side, side)
    forward = 2 * analytic_block_macs(kind, dim, side, 2, 5, 3.0, batch)["shared"]
    pos_embed_input_grad = 2 * batch * side * side * dim * 9  # x needs no gradient
    assert count_training_flops(block.train(), x) == 3 * forward - pos_embed_input_grad


class SdpaAttention(torch.nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_scaled_dot_product_attention_is_counted_by_both_counters():
    b, h, n, d = 2, 3, 40, 16
    q = torch.randn(b, h, n, d)
    counted = count_flops(SdpaAttention(), (q, q, q))
    assert counted.macs_fvcore == 2 * b * h * n * n * d  # Q K^T and A V; neither counter does this unaided
    assert counted.flops_flopcounter == 2 * counted.macs_fvcore
    assert counted.unattributed_fvcore == () and counted.unattributed_flopcounter == ()


def test_fused_attention_calls_are_recorded_with_their_shapes_and_flops():
    dim, side, heads, batch = 64, 6, 2, 3
    block = container.ContainerBlock(dim, heads, "mix", 5, tokens=(side, side)).eval()
    x = torch.randn(batch, dim, side, side)
    assert count_flops(block, x).attention_calls == ()  # the seed materialises its affinity matrix
    fast = count_flops(container.optimize(block), x)
    n, d = side * side, dim // heads
    (call,) = fast.attention_calls
    assert call.shapes == ((batch, heads, n, d),) * 3
    # Q, K and V are strided views into conv1's (tokens, 3C) output, and recorded as such
    assert call.strides[0] == (n * 3 * dim, d, 3 * dim, 1)
    assert fast.row()["attention_flops"] == call.flops == 2 * analytic_block_macs(
        "mix", dim, side, heads, 5, 4.0, batch)["shared"] - 2 * batch * n * (9 + 5 * 5 + 12 * dim) * dim


def test_attention_kernel_time_adds_up_over_calls_and_keeps_the_faster_dtype():
    from bench.flops import AttentionCall
    from bench.roofline import attention_kernel_ms
    shape = (2, 2, 64, 32)
    call = AttentionCall((shape,) * 3, (torch.empty(shape).stride(),) * 3)
    quick = StopRule(rel_iqr=1.0, min_runs=2, min_time_s=0.0, max_time_s=0.2)
    once = attention_kernel_ms([call], stop=quick)
    assert once > 0
    assert attention_kernel_ms([call, call, call], stop=quick) == pytest.approx(3 * once)  # timed once, cached
    both = attention_kernel_ms([call], dtypes=("fp32", "bf16"), stop=quick)
    assert both == min(once, attention_kernel_ms([call], dtypes=("bf16",), stop=quick))


def test_kernel_bound_charges_attention_its_kernel_time_and_the_rest_the_gemm_peak():
    from bench.profiler import profile
    from bench.roofline import attention_kernel_ms
    roof = Roofline("cpu", "fp32", peak_flops=50e9, gemm_size=1024, bandwidth_bytes_s=10e9)
    quick = bench.Options(impl="fast", stop=StopRule(rel_iqr=1.0, min_runs=2, min_time_s=0.0, max_time_s=0.2))
    target = BlockTarget("mix", 64, 7)
    result = profile(target, 2, quick, roofline=roof, memory=False)
    row = result.row()
    assert row["kernel_bound_ms"] == result.bounds.kernel.kernel_bound_ms and result.bounds.roofline == roof
    assert row["achieved_flops"] == result.bounds.position.achieved_flops
    calls = count_flops(container.optimize(target.build().eval()), torch.randn(2, 64, 7, 7)).attention_calls
    attention_ms = attention_kernel_ms(calls, threads=torch.get_num_threads())  # the profile's, cached
    assert row["attention_kernel_ms"] == attention_ms > 0
    assert row["gemm_bound_ms"] == pytest.approx(row["work_flops"] / 50e9 * 1e3)
    other_ms = (row["work_flops"] - row["attention_flops"]) / 50e9 * 1e3
    assert row["kernel_bound_ms"] == pytest.approx(attention_ms + other_ms)
    assert row["fraction_of_kernel_bound"] == pytest.approx(row["kernel_bound_ms"] / row["latency_median_ms"])
    conv = profile(BlockTarget("conv", 64, 7), 2, quick, roofline=roof, memory=False).row()
    assert conv["attention_kernel_ms"] == 0.0 and conv["kernel_bound_ms"] == conv["gemm_bound_ms"]


def test_container_light_macs_match_the_published_figure():
    counted = count_flops(container.container_light().eval(), torch.randn(1, 3, 224, 224))
    assert 3.85e9 < counted.macs_fvcore < 3.87e9  # "about 3.86 G multiply-adds at 224 by fvcore's count"
    assert counted.crosscheck_rel_diff < 1e-9


def test_cpu_allocator_peak_of_a_known_allocation_pattern():
    mib = 2**20

    def allocate():
        a = torch.empty(10 * mib, dtype=torch.uint8)
        b = torch.empty(4 * mib, dtype=torch.uint8)
        del a
        c = torch.empty(1 * mib, dtype=torch.uint8)
        return b, c

    peak = cpu_allocator_peak(allocate)
    assert peak.peak_bytes == 14 * mib  # 10 + 4 live together; the 1 MiB comes after the 10 is freed
    assert peak.allocated_bytes == 15 * mib


def test_cpu_allocator_peak_ignores_memory_live_before_the_call():
    held = torch.ones(8 * 2**20, dtype=torch.uint8)
    assert cpu_allocator_peak(lambda: held.add_(1)).peak_bytes < 1024  # the scalar's wrapper, not the 8 MiB


def test_roofline_bound_is_the_lower_of_compute_and_bandwidth():
    roof = Roofline("cpu", "fp32", peak_flops=100e9, gemm_size=1024, bandwidth_bytes_s=10e9)
    assert roof.bound(2.0) == 20e9  # memory bound
    assert roof.bound(50.0) == 100e9  # compute bound
    assert math.isclose(roof.bound(10.0), 100e9)


def test_block_target_names_and_head_dim():
    target = BlockTarget("mix", 320, 14)
    assert target.name == "mix@320x14" and target.num_heads == 10
    assert target.input_shape(4) == (4, 320, 14, 14)
