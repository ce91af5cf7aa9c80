"""CUDA paths of the harness. Marked `cuda`: they skip cleanly where there is no GPU."""
import pytest
import torch

import bench
import container

pytestmark = pytest.mark.cuda
FAST_STOP = bench.StopRule(rel_iqr=1.0, min_runs=3, min_time_s=0.0, max_time_s=0.3)


def test_cuda_peak_memory_of_a_known_allocation():
    device = torch.device("cuda")

    def allocate():
        a = torch.empty(32 * 2**20, dtype=torch.uint8, device=device)
        b = torch.empty(16 * 2**20, dtype=torch.uint8, device=device)
        del a
        return b

    peak = bench.cuda_allocator_peak(allocate, device)
    assert peak.peak_allocated_bytes == 48 * 2**20
    assert peak.peak_reserved_bytes >= 48 * 2**20


def test_cuda_timing_waits_for_the_kernels():
    x = torch.randn(4096, 4096, device="cuda")
    stats = bench.measure_latency(lambda: x @ x, device="cuda", stop=FAST_STOP)
    # A 4096^3 GEMM is 137 GFLOP: an unsynchronised timer would report microseconds of launch time.
    assert stats.median_ms > 137e9 / 2e15 * 1e3


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_profile_a_block_on_cuda(dtype):
    result = bench.profile(bench.BlockTarget("mix", 64, 14), 4, bench.Options(device="cuda", dtype=dtype,
                                                                                stop=FAST_STOP))
    row = result.row()
    assert result.status == "ok" and row["device"] == "cuda" and bench.environment("cuda")["gpu_name"]
    assert row["cuda_peak_allocated_bytes"] == result.memory.cuda.peak_allocated_bytes > 0
    assert result.memory.cpu is None and "cpu_alloc_peak_bytes" not in row


def test_cuda_out_of_memory_is_recorded_and_the_run_goes_on():
    free, _ = torch.cuda.mem_get_info()
    side = 56
    # An N x N attention matrix per head that cannot fit: B * heads * N^2 * 4 bytes > free memory.
    batch = int(free / (2 * (side * side) ** 2 * 4)) + 64
    row = bench.profile(bench.BlockTarget("attn", 64, side), batch, bench.Options(device="cuda", stop=FAST_STOP),
                        flops=False, memory=False)
    assert row.status == "oom"
    ok = bench.profile(bench.BlockTarget("attn", 64, side), 1, bench.Options(device="cuda", stop=FAST_STOP))
    assert ok.status == "ok"


def test_cuda_roofline_calibration_is_plausible():
    roof = bench.calibrate("cuda", "bf16")
    assert roof.peak_flops > 1e12 and roof.bandwidth_bytes_s > 1e11


def test_blocks_match_between_cpu_and_cuda():
    block = container.ContainerBlock(64, 2, "mix", 5, tokens=(8, 8)).eval()
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block.cuda()(x.cuda()).cpu(), block.cpu()(x), rtol=1e-4, atol=1e-4)
