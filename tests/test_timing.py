"""bench.timing: the stop rule, the statistics, and how many of the calls it makes are timed.

Assertions are on call counts and on lower bounds that no load can break, not on how fast this
machine is: the suite must pass while other processes keep every core busy.
"""
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.utils.benchmark import Measurement
from torch.utils.benchmark.utils.common import TaskSpec

from bench import LatencyStats, StopRule, measure_latency, timing
from bench.timing import measure_interleaved, relative_iqr, time_calls


@pytest.mark.parametrize("times,elapsed,done", [
    ([1.0] * 4, 1.0, False),  # too few runs
    ([1.0] * 5, 0.1, False),  # too little time
    ([1.0] * 5, 1.0, True),  # tight and enough
    ([1.0, 2.0, 3.0, 4.0, 5.0], 1.0, False),  # IQR / median = 2 / 3, too noisy
    ([1.0, 2.0, 3.0, 4.0, 5.0], 5.0, True),  # out of time: stop anyway
    ([], 5.0, True),
])
def test_stop_rule_on_known_samples(times, elapsed, done):
    assert StopRule(rel_iqr=0.05, min_runs=5, min_time_s=0.5, max_time_s=5.0).done(times, elapsed) is done


def test_relative_iqr_of_known_samples():
    assert relative_iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2 / 3)
    assert relative_iqr([2.0] * 7) == 0.0


def test_latency_statistics_of_known_samples():
    times_s = [t / 1e3 for t in range(1, 11)]  # 1 .. 10 ms
    m = Measurement(number_per_run=1, raw_times=times_s, task_spec=TaskSpec(stmt="pass", setup="pass"))
    stats = LatencyStats.from_measurement(m, number_per_run=4, cold_s=0.5, noisy=False)
    reference = np.arange(1, 11, dtype=float)
    assert stats.median_ms == pytest.approx(np.median(reference))
    assert stats.p90_ms == pytest.approx(np.quantile(reference, 0.9))
    assert stats.iqr_ms == pytest.approx(np.quantile(reference, 0.75) - np.quantile(reference, 0.25))
    assert (stats.min_ms, stats.runs, stats.number_per_run, stats.cold_ms) == (1.0, 10, 4, 500.0)


def test_a_result_row_keeps_its_column_names():
    m = Measurement(number_per_run=2, raw_times=[0.004, 0.006], task_spec=TaskSpec(stmt="pass", setup="pass"))
    row = LatencyStats.from_measurement(m, number_per_run=2, cold_s=0.01, noisy=True, warmup_calls=3).row()
    assert list(row) == ["latency_cold_ms", "latency_median_ms", "latency_iqr_ms", "latency_p90_ms", "latency_min_ms",
                         "latency_mean_ms", "runs", "number_per_run", "noisy", "warmup_calls", "timed_calls",
                         "latency_norm_ms", "latency_norm_low_ms", "latency_norm_high_ms", "machine_speed",
                         "calibration_ms", "reference_calibration_ms", "untimed_calls"]
    assert (row["runs"], row["warmup_calls"], row["timed_calls"], row["noisy"]) == (2, 3, 4, True)


def test_measure_latency_reports_the_cold_call_on_its_own():
    calls = []

    def fn():
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.05)  # a slow first call, as lazy initialisation makes it

    stats = measure_latency(fn, stop=StopRule(rel_iqr=1.0, min_runs=5, min_time_s=0.0, max_time_s=10.0),
                            warmup_s=0.0)
    assert stats.cold_ms >= 50.0
    assert stats.median_ms < stats.cold_ms
    assert stats.runs >= 5 and len(stats.times_ms) == stats.runs
    assert stats.p90_ms >= stats.median_ms >= stats.min_ms


def test_measure_latency_fixes_and_restores_the_thread_count():
    before = torch.get_num_threads()
    seen = []
    measure_latency(lambda: seen.append(torch.get_num_threads()), threads=1,
                    stop=StopRule(min_runs=3, min_time_s=0.0, max_time_s=0.2), warmup_s=0.0)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before


# --- how many calls are timed ---------------------------------------------------------------------------


def counting(seconds: float):
    """A workload that takes at least `seconds` (sleeping, so a busy machine only makes it slower)."""
    calls = []

    def fn():
        calls.append(1)
        time.sleep(seconds)
    return fn, calls


@pytest.mark.parametrize("seconds", [0.02, 0.0002], ids=["20ms-slower-than-a-block", "0.2ms-many-per-block"])
def test_after_the_warm_up_every_call_is_timed(seconds):
    fn, calls = counting(seconds)
    # rel_iqr=inf: stop after exactly min_runs blocks, however noisy the machine is
    stats = measure_latency(fn, stop=StopRule(rel_iqr=math.inf, min_runs=5, min_time_s=0.0, max_time_s=60.0),
                            warmup_s=0.05)
    after_warm_up = len(calls) - 1 - stats.warmup_calls  # all calls, less the cold call and the warm-up
    assert stats.runs == 5 and stats.timed_calls == stats.runs * stats.number_per_run
    assert stats.timed_calls / after_warm_up >= 0.9  # torch's Timer.timeit(1) timed 1 call in 3 here
    assert after_warm_up == stats.timed_calls  # in fact, no untimed call at all between the blocks
    assert stats.warmup_calls >= 2


def test_the_first_measurement_of_a_process_warms_up_longer(monkeypatch):
    monkeypatch.setattr(timing, "_warmed_up", set())
    entered: list[float] = []
    left: list[float] = []

    def fn():
        entered.append(time.perf_counter())
        time.sleep(0.001)
        left.append(time.perf_counter())

    stop = StopRule(rel_iqr=math.inf, min_runs=3, min_time_s=0.0, max_time_s=60.0)
    stats = measure_latency(fn, threads=1, stop=stop, warmup_s=0.0)
    first_timed = entered[1 + stats.warmup_calls]
    assert first_timed - left[0] >= timing.FIRST_WARMUP_S  # from the end of the cold call to the first timed call
    assert ("cpu", 1) in timing._warmed_up  # later measurements on this device and thread count warm up as asked


def test_time_calls_times_a_block_of_calls():
    fn, calls = counting(0.001)
    assert time_calls(fn, 7, torch.device("cpu")) >= 0.007
    assert len(calls) == 7


def test_interleaved_calls_alternate_each_after_its_own_warm_up():
    log = []
    times = measure_interleaved(lambda: log.append("a"), lambda: log.append("b"), pairs=2, warmup_calls=2)
    assert "".join(log) == "aaa" "bbb" "aaa" "bbb" "aaa"
    assert len(times.first_ms) == 3 and len(times.second_ms) == 2
    assert (times.warmup_calls, times.timed_calls) == (10, 5)
    assert times.warmup_calls + times.timed_calls == len(log)  # warm-ups are explicit and counted


def test_interleaved_calls_stop_when_out_of_time():
    log = []
    times = measure_interleaved(lambda: log.append("a"), lambda: log.append("b"), pairs=5, warmup_calls=0,
                                max_time_s=0.0)
    assert log == ["a"] and times.first_ms and not times.second_ms


FREED_RSS_PROBE = """
import sys, psutil, torch
from bench.timing import keep_freed_memory
if sys.argv[1] == "kept" and not keep_freed_memory():
    print("no-mallopt"); raise SystemExit
rss = psutil.Process().memory_info().rss
x = torch.ones(4 << 20)  # a 16 MiB activation, touched and freed
del x
print(psutil.Process().memory_info().rss - rss)
"""


def test_timing_keeps_freed_memory_where_glibc_would_return_it():
    def retained(mode):
        out = subprocess.run([sys.executable, "-c", FREED_RSS_PROBE, mode], capture_output=True, text=True,
                             check=True).stdout.split()[-1]
        return out if out == "no-mallopt" else int(out)

    kept = retained("kept")
    if kept == "no-mallopt":
        pytest.skip("this C library has no mallopt (not glibc)")
    assert retained("default") < 4 << 20  # glibc gives a freed 16 MiB block back to the kernel at once
    assert kept >= 16 << 20  # kept in the heap: the next call reuses it without page faults
