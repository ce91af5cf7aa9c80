"""The measuring instrument: FLOPs, memory, latency and throughput of Container blocks and networks.

`bench.profile` is the one entry point that the CLI, the search and the regression gate call; it
returns a typed `Profile`, which `Profile.row()` flattens into a results row. `Options.runtime` picks
what is measured: the reference modules, container.optimize, ONNX Runtime or OpenVINO (bench.runtimes).
"""
from bench.env import environment, fingerprint, machine_summary
from bench.flops import FlopCount, count_flops, count_training_flops
from bench.isolated import RssPeak, RssWorker
from bench.memory import AllocatorPeak, CudaPeak, cpu_allocator_peak, cuda_allocator_peak
from bench.options import Options
from bench.profiler import profile
from bench.result import Bounds, FlopFigures, KernelBound, MemoryFigures, Profile, RooflinePosition
from bench.roofline import Roofline, calibrate
from bench.runtimes import RUNTIMES, TORCH_RUNTIMES, Converted, ExportFailed, check_runtime, convert
from bench.targets import STAGE_SHAPES, BenchInputError, BlockTarget, ModuleTarget, NetworkTarget, as_target
from bench.timing import LatencyStats, StopRule, measure_latency
from bench.workload import Workload, build_workload

__all__ = [
    "AllocatorPeak", "BenchInputError", "BlockTarget", "Bounds", "Converted", "CudaPeak", "ExportFailed",
    "FlopCount", "FlopFigures", "KernelBound", "LatencyStats", "MemoryFigures", "ModuleTarget", "NetworkTarget",
    "Options", "Profile", "RUNTIMES", "Roofline", "RooflinePosition", "RssPeak", "RssWorker", "STAGE_SHAPES",
    "StopRule", "TORCH_RUNTIMES", "Workload", "as_target", "build_workload", "calibrate", "check_runtime",
    "convert", "count_flops", "count_training_flops", "cpu_allocator_peak", "cuda_allocator_peak", "environment",
    "fingerprint", "machine_summary", "measure_latency", "profile",
]
