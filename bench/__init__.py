"""The measuring instrument: FLOPs, memory, latency and throughput of Container blocks and networks.

`bench.profile` is the one entry point that the CLI, the search and the regression gate call; it
returns a typed `Profile`, which `Profile.row()` flattens into a results row.
"""
from bench.env import environment, fingerprint, machine_summary
from bench.flops import FlopCount, count_flops, count_training_flops
from bench.isolated import RssPeak, RssWorker
from bench.memory import AllocatorPeak, CudaPeak, cpu_allocator_peak, cuda_allocator_peak
from bench.profiler import profile
from bench.result import Bounds, FlopFigures, KernelBound, MemoryFigures, Profile, RooflinePosition
from bench.roofline import Roofline, calibrate
from bench.targets import STAGE_SHAPES, BenchInputError, BlockTarget, ModuleTarget, NetworkTarget, as_target
from bench.timing import LatencyStats, StopRule, measure_latency
from bench.workload import Options, build_workload

__all__ = [
    "AllocatorPeak", "BenchInputError", "BlockTarget", "Bounds", "CudaPeak", "FlopCount", "FlopFigures",
    "KernelBound", "LatencyStats", "MemoryFigures", "ModuleTarget", "NetworkTarget", "Options", "Profile",
    "Roofline", "RooflinePosition", "RssPeak", "RssWorker", "STAGE_SHAPES", "StopRule", "as_target",
    "build_workload", "calibrate", "count_flops", "count_training_flops", "cpu_allocator_peak",
    "cuda_allocator_peak", "environment", "fingerprint", "machine_summary", "measure_latency", "profile",
]
