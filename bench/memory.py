"""Peak memory of one call, from the allocator itself, labelled for what each figure is.

- CPU, allocator-exact: torch.profiler records every CPU allocation and free; the peak of their
  running sum is the most bytes the call had allocated at once, above what was live before it.
- CPU, process: the peak resident set of an isolated worker process (see bench.isolated).
- CUDA: the caching allocator's own peak counters, reset before the call.

The allocator figures exist only where torch allocates: the torch runtimes (reference, fast), and aot,
whose AOTInductor package takes its buffers from torch's allocator.
onnxruntime and openvino allocate on their own, so for them bench.profile gives the process
figure only (bench.runtimes.Converted.torch_allocates).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass(frozen=True)
class AllocatorPeak:
    peak_bytes: int  # most bytes allocated at once during the call, above the level before it
    allocated_bytes: int  # every allocation made during the call, added up


@dataclass(frozen=True)
class CudaPeak:
    peak_allocated_bytes: int  # most bytes allocated at once during the call, above the level before it
    peak_reserved_bytes: int  # the caching allocator's reserved peak (its whole pool, not only this call)
    allocated_bytes: int  # every allocation made during the call, added up


def _allocation_events(prof) -> list[tuple[int, int, str]]:
    from torch._C._profiler import _EventType

    found, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation:
            found.append((event.start_time_ns, event.extra_fields.alloc_size, str(event.extra_fields.device)))
        stack.extend(event.children)
    return sorted(found)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side prints two lines of its own at every start
    and stop, which would bury a progress bar under hundreds of them."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_allocator_peak(fn: Callable[[], object]) -> AllocatorPeak:
    """Allocator-exact CPU peak of one call of fn()."""
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with _quiet_stderr():  # only around start and stop: what fn() prints still shows
            prof.__enter__()
        try:
            fn()
        finally:
            with _quiet_stderr():
                prof.__exit__(None, None, None)
    sizes = [size for _, size, device in _allocation_events(prof) if device.startswith("cpu")]
    peak = max(itertools.accumulate(sizes, initial=0))
    return AllocatorPeak(peak_bytes=int(peak), allocated_bytes=int(sum(s for s in sizes if s > 0)))


def cuda_allocator_peak(fn: Callable[[], object], device: torch.device) -> CudaPeak:
    """CUDA caching-allocator peaks of one call: allocated above the level before it, and reserved."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    allocated_before = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
    fn()
    torch.cuda.synchronize(device)
    stats = torch.cuda.memory_stats(device)
    return CudaPeak(peak_allocated_bytes=int(torch.cuda.max_memory_allocated(device) - before),
                    peak_reserved_bytes=int(torch.cuda.max_memory_reserved(device)),
                    allocated_bytes=int(stats.get("allocated_bytes.all.allocated", 0) - allocated_before))
