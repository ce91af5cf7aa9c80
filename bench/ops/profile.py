"""Where a runtime's time goes, op by op: `profile_ops` for one target and runtime, `compare` across runtimes.

Each runtime is read by its own profiler, on the callable that bench times, built the way bench builds it:

    reference, fast  torch.profiler around workload.step (bench.workload.build_workload, so `fast` is
                     container.optimize); self CPU time per (op, input shapes), so rows never count a
                     child's time twice and sum to the total
    openvino         the compiled model with PERF_COUNT; each node's real time, the mean over calls
    onnxruntime      the session's profiler (enable_profiling); each node's kernel time, the median over calls
    aot              torch.profiler around the package bench times, compiled again with a record around each
                     generated kernel and extern call (bench.runtimes.aot_runtime.profiling_package): self CPU
                     time per kernel and per aten op (with its input shapes) as for the torch runtimes

Every row gets one of CATEGORIES from `categorize`, so the runtimes compare category by category. The
profilers add their own overhead per op (torch's the most), so the figures locate the time; bench's
latency, not these sums, is the figure to quote.
"""
from __future__ import annotations

import json
import re
import statistics
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch
from torch.profiler import ProfilerActivity, profile

from bench.fast_goal import DEPLOYED, TORCH_NATIVE
from bench.options import Options
from bench.runtimes.aot_runtime import load_package, profiling_package
from bench.runtimes.onnx_runtime import onnxruntime_session
from bench.runtimes.openvino_runtime import compile_openvino
from bench.targets import BenchInputError, Target
from bench.timing import intra_op_threads, keep_freed_memory, time_calls
from bench.workload import build_reference, build_workload

GEMM, DEPTHWISE, PATCH = "1x1 conv / GEMM", "depthwise conv", "patch embedding conv"
ATTENTION, NORM, ACTIVATION = "attention", "norm", "activation"
ELEMENTWISE, LAYOUT, POOLING, OTHER = "elementwise add/mul", "layout / copy / reorder", "pooling / head", "other"
CATEGORIES = (GEMM, DEPTHWISE, PATCH, ATTENTION, NORM, ACTIVATION, ELEMENTWISE, LAYOUT, POOLING, OTHER)
COLUMNS = ["runtime", "target", "batch", "op", "category", "shape", "calls_per_run", "ms_per_run", "share", "node"]
WARMUP_CALLS = 3

# Resolved from the op's input shapes (see categorize): a conv by its weight, a matmul by its operands.
CONV, MATMUL = "<conv>", "<matmul>"
_LAYOUT_TORCH = (r"copy_|clone|contiguous|to|_to_copy|permute|transpose|t|view|reshape|_reshape_alias|_unsafe_view|"
                 r"expand|as_strided_?|slice|select|narrow|chunk|split|split_with_sizes|unbind|cat|stack|squeeze|"
                 r"unsqueeze|flatten|detach|resolve_conj|resolve_neg|constant_pad_nd|pad|_reorder\w*")
# The one mapping from an op's name to its category, per profiler (a regex, matched whole, first match wins).
# "attention" holds every token-mixing product over the tokens: softmax attention, and the batched
# matmuls of the dense affinities too (an operand with a batch dimension on both sides).
CATEGORY_PATTERNS: dict[str, tuple[tuple[str, str], ...]] = {
    "torch": (  # the op's name without its namespace (aten::, mkldnn::)
        (r".*conv.*", CONV),  # conv2d, _convolution, mkldnn_convolution, _slow_conv2d_forward, _convolution_pointwise_
        (r"mm|addmm|linear|_linear_pointwise|_addmm_activation|addmv|mv", GEMM),
        (r"matmul", MATMUL),
        (r"bmm|baddbmm|einsum|.*scaled_dot_product.*|.*flash_attention.*|_?softmax|_safe_softmax", ATTENTION),
        (r".*norm.*", NORM),  # batch_norm, native_batch_norm, layer_norm, native_layer_norm, group_norm
        (r"gelu_?|relu_?|sigmoid_?|silu_?|tanh_?|hardswish_?|erf_?", ACTIVATION),
        (r"add_?|mul_?|sub_?|rsub|div_?|addcmul_?|neg|sqrt|rsqrt|pow", ELEMENTWISE),
        (_LAYOUT_TORCH, LAYOUT),
        (r"mean|sum|adaptive_avg_pool2d|_adaptive_avg_pool2d|avg_pool2d|max_pool2d.*|amax", POOLING),
    ),
    "openvino": (  # ProfilingInfo.node_type
        (r"Convolution", CONV),
        (r"GroupConvolution", DEPTHWISE),
        (r"FullyConnected|Gemm", GEMM),
        (r"MatMul", MATMUL),
        (r"Softmax|SoftMax|ScaledDotProductAttention|SDPA|Einsum", ATTENTION),
        (r"MVN|NormalizeL2|BatchNormInference|RMS", NORM),
        (r"Gelu|Relu|Sigmoid|Swish|HSwish|Erf|Tanh|Elu", ACTIVATION),
        (r"Eltwise|Add|Multiply|Subtract|Divide|Power|PowerStatic|Sqrt|Subgraph", ELEMENTWISE),
        (r"Reorder|Transpose|Reshape|Concat|Split|VariadicSplit|StridedSlice|Slice|Gather|Squeeze|Unsqueeze|"
         r"Convert|Broadcast|Pad|ShapeOf", LAYOUT),
        (r"ReduceMean|ReduceSum|Reduce|AvgPool|MaxPool|AdaptiveAvgPool|Pooling", POOLING),
    ),
    "onnxruntime": (  # the trace's args.op_name
        (r"Conv|FusedConv|NhwcFusedConv|NchwcConv", CONV),
        (r"Gemm|FusedGemm", GEMM),
        (r"MatMul|FusedMatMul", MATMUL),
        (r"Softmax|Attention|MultiHeadAttention|Einsum", ATTENTION),
        (r".*Normalization", NORM),  # Layer-, Batch-, SkipLayer-, SimplifiedLayer-, Instance-
        (r"Gelu|FastGelu|BiasGelu|Relu|Sigmoid|Erf|Tanh|QuickGelu", ACTIVATION),
        (r"Add|Mul|Sub|Div|Sum|Pow|Sqrt|Neg", ELEMENTWISE),
        (r"Reorder\w*|Transpose|Reshape|Split|Concat|Slice|Gather|Squeeze|Unsqueeze|Flatten|Expand|Cast|"
         r"Identity|Shape|Pad", LAYOUT),
        (r"GlobalAveragePool|AveragePool|MaxPool|ReduceMean|ReduceSum", POOLING),
    ),
    # aot: the aten ops its package calls are named as in eager torch (the "torch" patterns); a call through
    # AOTInductor's C shim ("aoti_torch_cpu_addmm_out") by the op it calls; a generated kernel
    # ("graph_0_cpp_fused_add_gelu_3") by the ops Inductor fused into it: the first of these that the name
    # mentions, so a kernel fusing a norm with the residual add feeding it counts as the norm.
    "aot-fused": (
        (r"softmax|bmm|scaled_dot_product", ATTENTION),
        (r"norm|var_mean", NORM),
        (r"gelu|relu|sigmoid|silu|tanh|hardswish|erf", ACTIVATION),
        (r"mean|sum|avg_pool|max_pool|amax", POOLING),
        (r"add|mul|sub|div|sqrt|pow|neg", ELEMENTWISE),
        (r"clone|copy|cat|permute|transpose|view|reshape|expand|pad|slice|select|squeeze|stack|split|strided",
         LAYOUT),
    ),
}
TORCH_PROFILED = ("reference", "fast", "aot")  # read by torch.profiler: aten op names
_AOTI_SHIM = re.compile(r"aoti_torch_(?:cpu|cuda)_(\w+?)(?:_out)?")
_AOTI_KERNEL = re.compile(r"(?:graph_\d+_)?cpp_fused_(\w+?)(?:_\d+)?")


def categorize(op: str, runtime: str, shape_info: Sequence[Sequence[int]] = ()) -> str:
    """The category (one of CATEGORIES) of an op as `runtime`'s profiler names it, from its name and its
    input shapes; "other" for anything unknown, never an error."""
    profiler = "torch" if runtime in TORCH_PROFILED else runtime
    if runtime == "aot":
        kernel = _AOTI_KERNEL.fullmatch(op)
        if kernel:
            return next((category for pattern, category in CATEGORY_PATTERNS["aot-fused"]
                         if re.search(pattern, kernel.group(1))), OTHER)
        shim = _AOTI_SHIM.fullmatch(op)
        op = shim.group(1) if shim else op
    name = op.split("::")[-1] if profiler == "torch" else op
    for pattern, category in CATEGORY_PATTERNS.get(profiler, ()):
        if re.fullmatch(pattern, name):
            if category == CONV:
                # mkldnn's in-place binary conv (u += conv(x)) takes the output first, the weight third
                return _conv_category(shape_info, 2 if name.endswith("_") else 1)
            return _matmul_category(shape_info) if category == MATMUL else category
    return OTHER


def _conv_category(shapes: Sequence[Sequence[int]], weight_index: int) -> str:
    """A conv by its weight (C_out, C_in / groups, k, k): one input channel per group is depthwise, a
    kernel over 1x1 is the patch embedding (the strided conv; blocks have no other dense kxk conv)."""
    if len(shapes) <= weight_index or len(shapes[weight_index]) != 4:
        return GEMM
    weight, source = shapes[weight_index], shapes[weight_index - 1]
    if weight[1] == 1 and len(source) == 4 and source[1] > 1:
        return DEPTHWISE
    return PATCH if max(weight[2:]) > 1 else GEMM


def _matmul_category(shapes: Sequence[Sequence[int]]) -> str:
    """A product with a 2-D operand (a weight) is a GEMM; one batched on both sides mixes tokens."""
    operands = [s for s in shapes[:2] if s]
    return ATTENTION if len(operands) == 2 and min(len(s) for s in operands) > 2 else GEMM


@dataclass(frozen=True)
class OpTime:
    """One op (torch: one op at one set of input shapes; openvino, onnxruntime: one node), per call of the model."""

    op: str
    shapes: tuple[tuple[int, ...], ...]
    calls_per_run: float
    ms_per_run: float
    node: str = ""  # the graph node's name (openvino, onnxruntime)
    kind: str = ""  # what categorize reads when it differs from `op` (openvino: the node type)


@dataclass(frozen=True, eq=False)
class OpProfile:
    target: str
    runtime: str
    batch: int
    threads: int
    runs: int
    total_ms: float  # the rows' sum per call
    wall_ms: float  # wall-clock per call of the profiled calls, profiler on (its overhead included)
    rows: pd.DataFrame = field(repr=False)  # COLUMNS, largest first


def profile_ops(target: Target, batch_size: int, options: Options, runs: int = 20) -> OpProfile:
    """Op-by-op times of one call of `target` at `batch_size` on options.runtime (CPU), over `runs` calls
    after a warm-up. Raises bench.runtimes.ExportFailed where the runtime cannot convert the target."""
    if runs < 1:
        raise BenchInputError(f"--runs {runs}: must be >= 1")
    options.validate()
    if torch.device(options.device).type != "cpu":
        raise BenchInputError(f"--device {options.device}: ops profiles on the CPU")
    keep_freed_memory()  # as bench.timing does before it times
    threads = options.threads or torch.get_num_threads()
    options = options.replace(threads=threads)
    read = {"openvino": _openvino_times, "onnxruntime": _onnxruntime_times, "aot": _aot_times}.get(
        options.runtime, _torch_times)
    times, wall_ms = read(target, batch_size, options, runs)
    return _profile(target.name, options.runtime, batch_size, threads, runs, times, wall_ms)


def _wall_ms(call: Callable[[], object], runs: int) -> float:
    """Wall-clock ms per call of `runs` calls, profiler on: bench.timing's block (CPU profiles only)."""
    return time_calls(call, runs, torch.device("cpu")) / runs * 1e3


def _torch_times(target: Target, batch_size: int, options: Options, runs: int) -> tuple[list[OpTime], float]:
    workload = build_workload(target, batch_size, options, check=False)
    return _torch_profiler_times(workload.step, options, runs)


def _aot_times(target: Target, batch_size: int, options: Options, runs: int) -> tuple[list[OpTime], float]:
    module, x = build_reference(target, batch_size, options)
    runner = load_package(profiling_package(module, x, options), x.device)
    return _torch_profiler_times(lambda: runner(x), options, runs)


def _torch_profiler_times(call: Callable[[], object], options: Options, runs: int) -> tuple[list[OpTime], float]:
    """Self CPU time per (op, input shapes) of `runs` calls after a warm-up, and the wall-clock ms per call."""
    with intra_op_threads(options.threads):  # as bench.timing.measure_latency runs workload.step
        for _ in range(WARMUP_CALLS):
            call()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
            wall_ms = _wall_ms(call, runs)
    times = [OpTime(e.key, tuple(tuple(s) for s in e.input_shapes), e.count / runs, e.self_cpu_time_total / runs / 1e3)
             for e in profiler.key_averages(group_by_input_shape=True) if e.self_cpu_time_total > 0]
    return times, wall_ms


def _openvino_times(target: Target, batch_size: int, options: Options, runs: int) -> tuple[list[OpTime], float]:
    module, x = build_reference(target, batch_size, options)
    compiled = compile_openvino(module, x, options, perf_count=True)
    request, feeds = compiled.create_infer_request(), {0: x.detach().numpy()}

    def infer() -> object:
        return request.infer(feeds, share_inputs=True, share_outputs=True)

    for _ in range(WARMUP_CALLS):
        infer()
    # The CPU plugin reports each node's mean time over every call of the request so far (whole
    # microseconds), not the last call's: the profiled calls' mean is what the sums gained since the
    # warm-up, so the cold first call stays out. There is no per-call figure to take a median of.
    warm = _openvino_means(request)
    wall_ms = _wall_ms(infer, runs)
    done, calls = _openvino_means(request), WARMUP_CALLS + runs
    shapes = _openvino_shapes(compiled)
    times = []
    for node, (node_type, exec_type, mean_ms) in done.items():
        ms = max(0.0, (calls * mean_ms - WARMUP_CALLS * warm.get(node, ("", "", 0.0))[2]) / runs)
        times.append(OpTime(f"{node_type} ({exec_type})", shapes.get(node, ()), 1.0, ms, node, node_type))
    return times, wall_ms


def _openvino_means(request) -> dict[str, tuple[str, str, float]]:
    """node -> (node type, exec type, mean ms per call so far) of the nodes that ran (a fused node does not:
    its time is in the node it was fused into)."""
    return {info.node_name: (info.node_type, info.exec_type, info.real_time.total_seconds() * 1e3)
            for info in request.get_profiling_info() if not str(info.status).endswith("NOT_RUN")}


def _openvino_shapes(compiled) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each runtime node's input shapes, by node name. Read after an inference: the converted model's
    input dimensions are dynamic, and the runtime model knows them only once it has run (-1: unknown)."""
    return {op.get_friendly_name(): tuple(tuple(d.get_length() if d.is_static else -1 for d in i.get_partial_shape())
                                          for i in op.inputs())
            for op in compiled.get_runtime_model().get_ordered_ops()}


def _onnxruntime_times(target: Target, batch_size: int, options: Options, runs: int) -> tuple[list[OpTime], float]:
    module, x = build_reference(target, batch_size, options)
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as directory:
        session = onnxruntime_session(module, x, options, profile_prefix=str(Path(directory) / "ort"))
        (source,), names = session.get_inputs(), [o.name for o in session.get_outputs()]
        feeds = {source.name: x.detach().numpy()}
        for _ in range(WARMUP_CALLS):
            session.run(names, feeds)
        wall_ms = _wall_ms(lambda: session.run(names, feeds), runs)
        trace = json.loads(Path(session.end_profiling()).read_text())
    return _onnxruntime_trace_times(trace, runs), wall_ms


def _onnxruntime_trace_times(trace: list[dict], runs: int) -> list[OpTime]:
    """Kernel times of the trace's last `runs` model runs (the warm-up's come first), per node: the median
    over runs of its time in a run."""
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session"
                     and e.get("name") == "model_run")[-runs:]
    if not windows:
        return []
    per_run: dict[str, list[float]] = defaultdict(lambda: [0.0] * len(windows))
    calls: dict[str, int] = defaultdict(int)
    ops: dict[str, tuple[str, tuple[tuple[int, ...], ...]]] = {}
    for e in trace:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        run = next((i for i, (start, end) in enumerate(windows) if start <= e["ts"] <= end), None)
        if run is None:
            continue
        node = e["name"].removesuffix("_kernel_time")
        per_run[node][run] += e["dur"] / 1e3  # the trace's times are in microseconds
        calls[node] += 1
        args = e.get("args", {})
        shapes = tuple(tuple(next(iter(s.values()), ())) for s in args.get("input_type_shape", []))
        ops[node] = (args.get("op_name", node), shapes)
    return [OpTime(ops[node][0], ops[node][1], calls[node] / len(windows), statistics.median(ms), node)
            for node, ms in per_run.items()]


def _format_shapes(shapes: Sequence[Sequence[int]]) -> str:
    """1x32x7x7, 32x1x3x3, 32: the tensor inputs (scalars and lists left out)."""
    return ", ".join("x".join(map(str, s)) for s in shapes if len(s))


def _profile(target: str, runtime: str, batch: int, threads: int, runs: int, times: list[OpTime],
             wall_ms: float) -> OpProfile:
    rows = pd.DataFrame([{"runtime": runtime, "target": target, "batch": batch, "op": t.op,
                          "category": categorize(t.kind or t.op, runtime, t.shapes), "shape": _format_shapes(t.shapes),
                          "calls_per_run": t.calls_per_run, "ms_per_run": t.ms_per_run, "node": t.node}
                         for t in times], columns=[c for c in COLUMNS if c != "share"])
    rows = rows[rows["ms_per_run"] > 0].sort_values("ms_per_run", ascending=False, ignore_index=True)
    total = float(rows["ms_per_run"].sum())
    rows.insert(COLUMNS.index("share"), "share", rows["ms_per_run"] / total if total > 0 else 0.0)
    return OpProfile(target, runtime, batch, threads, runs, total, wall_ms, rows)


def compare(profiles: Sequence[OpProfile]) -> pd.DataFrame:
    """ms per call by category: one row per (target, batch, category) that any runtime spends time in,
    then a `total` row per (target, batch); one column per runtime (empty where it has no profile),
    `best` (the runtime spending least there) and, with fast and another runtime, `fast_minus_best_ms`:
    fast's ms less the best other runtime's (> 0: where fast loses)."""
    runtimes = list(dict.fromkeys(p.runtime for p in profiles))
    groups: dict[tuple[str, int], dict[str, OpProfile]] = defaultdict(dict)
    for p in profiles:
        groups[p.target, p.batch][p.runtime] = p
    records = []
    for (target, batch), by_runtime in groups.items():
        sums = {r: p.rows.groupby("category")["ms_per_run"].sum() for r, p in by_runtime.items()}
        used = [c for c in CATEGORIES if any(c in s.index for s in sums.values())]
        for category in [*used, "total"]:
            ms = {r: (by_runtime[r].total_ms if category == "total" else float(sums[r].get(category, 0.0)))
                  if r in by_runtime else float("nan") for r in runtimes}
            records.append({"target": target, "batch": batch, "category": category, **ms})
    table = pd.DataFrame(records, columns=["target", "batch", "category", *runtimes])
    if table.empty:
        return table
    table["best"] = table[runtimes].idxmin(axis=1, skipna=True)
    others = [r for r in runtimes if r != "fast"]
    if "fast" in runtimes and others:
        table["fast_minus_best_ms"] = table["fast"] - table[others].min(axis=1)
    return table


def native_gaps(profiles: Sequence[OpProfile], top: int = 2) -> pd.DataFrame:
    """Where the torch-native deployment loses, by the profiles: one row per (target, batch) profiled on a
    torch-native runtime (fast, aot) and a deployed one (onnxruntime, openvino), the torch-native runtime that
    spends least in all (`native`) against the deployed one that spends least (`best`): both totals, the gap
    (> 0: torch-native loses) and `where`, the `top` categories that make most of it (ms each, the largest first;
    empty when torch-native spends no more in any category)."""
    groups: dict[tuple[str, int], dict[str, OpProfile]] = defaultdict(dict)
    for p in profiles:
        groups[p.target, p.batch][p.runtime] = p
    records = []
    for (target, batch), by_runtime in groups.items():
        natives = [by_runtime[r] for r in TORCH_NATIVE if r in by_runtime]
        deployed = [by_runtime[r] for r in DEPLOYED if r in by_runtime]
        if not natives or not deployed:
            continue
        native = min(natives, key=lambda p: p.total_ms)
        best = min(deployed, key=lambda p: p.total_ms)
        by_category = (native.rows.groupby("category")["ms_per_run"].sum()
                       .sub(best.rows.groupby("category")["ms_per_run"].sum(), fill_value=0.0))
        losses = by_category[by_category > 0].sort_values(ascending=False).head(top)
        records.append({"target": target, "batch": batch, "native": native.runtime, "best": best.runtime,
                        "native_ms": native.total_ms, "best_ms": best.total_ms,
                        "gap_ms": native.total_ms - best.total_ms,
                        "where": ", ".join(f"{category} {ms:+.3f} ms" for category, ms in losses.items())})
    return pd.DataFrame(records, columns=["target", "batch", "native", "best", "native_ms", "best_ms", "gap_ms",
                                          "where"])


__all__ = ["CATEGORIES", "CATEGORY_PATTERNS", "TORCH_PROFILED", "OpProfile", "OpTime", "categorize", "compare",
           "native_gaps", "profile_ops"]
