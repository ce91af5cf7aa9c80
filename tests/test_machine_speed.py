"""The machine's reference speed and the measurement that normalises to it: calibrated rounds
(bench.timing.measure_rounds), the interval of a median and of a ratio, the stored reference
(bench.machine), and a run's columns. Workloads here sleep, so a busy machine only makes them slower."""
import json
import math
import time

import numpy as np
import pytest

import bench
import bench.machine as machine
from bench.intervals import ratio_interval
from bench.profiler import profile_variants
from bench.timing import Calibration, StopRule, measure_latency, measure_rounds, median_interval, round_calibration

def rounds(n: int) -> StopRule:
    """Exactly `n` rounds, however noisy the machine."""
    return StopRule(rel_iqr=math.inf, rel_interval=math.inf, min_runs=n, min_time_s=0.0, max_time_s=60.0)


ROUNDS = rounds(7)


class Machine:
    """A stand-in machine whose speed the test sets: every workload on it takes `slowness` x its time."""

    def __init__(self, slowness: float = 1.0):
        self.slowness = slowness

    def workload(self, ms: float):
        return lambda: time.sleep(ms / 1e3 * self.slowness)


def test_a_slower_machine_gives_slower_measured_figures_and_the_same_normalised_ones():
    figures = {}
    for slowness in (1.0, 2.0):
        m = Machine(slowness)
        calibration = Calibration(m.workload(4.0), reference_ms=4.0)
        figures[slowness] = measure_latency(m.workload(6.0), stop=ROUNDS, warmup_s=0.0, min_block_s=0.0,
                                            calibration=calibration)
    slow, fast = figures[2.0], figures[1.0]
    assert slow.median_ms / fast.median_ms == pytest.approx(2.0, rel=0.15)
    assert slow.norm_ms == pytest.approx(fast.norm_ms, rel=0.1)
    assert fast.norm_ms == pytest.approx(6.0, rel=0.15)  # at the reference speed the workload takes its 6 ms
    assert slow.machine_speed == pytest.approx(0.5, rel=0.15)  # norm / measured: the machine ran at half speed
    for stats in figures.values():
        assert stats.norm_low_ms <= stats.norm_ms <= stats.norm_high_ms
        assert len(stats.rounds_norm_ms) == stats.runs == 7
        assert stats.reference_calibration_ms == 4.0


def test_a_drift_during_the_measurement_is_cancelled_round_by_round():
    m = Machine()
    calls = []

    def calibration_step():  # two calls a round (one untimed, one timed); the machine changes speed every 8 rounds
        calls.append(1)
        m.slowness = 1.0 if (len(calls) // 16) % 2 == 0 else 3.0
        time.sleep(0.004 * m.slowness)

    stats = measure_latency(m.workload(5.0), stop=rounds(40), warmup_s=0.0, min_block_s=0.0,
                            calibration=Calibration(calibration_step, reference_ms=4.0))
    measured = np.asarray(stats.times_ms)
    assert measured.max() / measured.min() > 2  # as measured, the figure moved with the machine
    assert stats.norm_ms == pytest.approx(5.0, rel=0.2)


def test_rounds_time_every_variant_once_per_round_in_a_seeded_shuffled_order():
    def order_of(seed):
        log = []
        fns = [lambda name=name: log.append(name) for name in "abc"]
        stats = measure_rounds(fns, stop=rounds(6), warmup_s=0.0, min_block_s=0.0, seed=seed)
        assert [s.runs for s in stats] == [6, 6, 6]
        timed = log[-18:]  # every call after the warm-ups: 6 rounds of 3 single-call blocks
        orders = ["".join(timed[i:i + 3]) for i in range(0, 18, 3)]
        assert all(sorted(r) == ["a", "b", "c"] for r in orders)
        return orders

    first = order_of(0)
    assert len(set(first)) > 1  # shuffled, not one fixed order
    assert order_of(0) == first  # and the same shuffle on every run


def test_a_calibrated_block_of_a_short_call_gets_one_untimed_call_before_it():
    m = Machine()
    log = []

    def fn():
        log.append("x")

    stats = measure_latency(fn, stop=rounds(4),
                            warmup_s=0.0, min_block_s=0.0, calibration=Calibration(m.workload(1.0), 1.0))
    assert stats.untimed_calls == stats.runs == 4  # short call: one warm call before each block
    assert len(log) == 1 + stats.warmup_calls + stats.untimed_calls + stats.timed_calls


def test_a_figure_near_the_threshold_is_timed_until_its_interval_excludes_it_or_time_runs_out():
    calls = []

    def alternating():  # 1.5, 2, 2.5, 1.5, ... ms: its median's interval always holds 2 ms
        calls.append(1)
        time.sleep((1.5, 2.0, 2.5)[len(calls) % 3] / 1e3)

    base = StopRule(rel_iqr=math.inf, rel_interval=math.inf, min_runs=5, min_time_s=0.0, max_time_s=0.5)
    calibration = Calibration(lambda: time.sleep(0.001), reference_ms=1.0)

    def runs(decide_ms):
        stop = StopRule(**{**vars(base), "decide_ms": decide_ms, "decide_extra_s": 0.3})
        return measure_latency(alternating, stop=stop, warmup_s=0.0, min_block_s=0.0, calibration=calibration).runs

    assert runs(None) == 5 and runs(200.0) == 5  # no threshold, or one far away: nothing more
    assert runs(2.0) > 5  # inside the interval: timed on


def test_the_median_interval_is_the_order_statistics_that_bracket_it():
    values = list(range(1, 11))  # 10 values: the 95% interval of the median is (x(2), x(9))
    assert median_interval(values) == (2.0, 9.0)
    assert median_interval([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few values for more than (min, max)
    assert all(math.isnan(v) for v in median_interval([]))


def test_the_ratio_interval_is_paired_by_round_and_reproducible():
    rng = np.random.default_rng(1)
    drift = rng.uniform(0.7, 1.3, 15)  # each round's machine state, shared by both variants
    a, b = 2.0 * drift * rng.normal(1, 0.01, 15), drift * rng.normal(1, 0.01, 15)
    low, high = ratio_interval(a, b)
    assert low < 2.0 < high and high - low < 0.1  # pairing cancels the drift the two rounds share
    assert ratio_interval(a, b) == (low, high)
    assert ratio_interval(b, b) == (1.0, 1.0)
    assert all(math.isnan(v) for v in ratio_interval(a[:5], b))  # not paired: no interval


def test_the_reference_speed_is_made_on_first_use_stored_and_refreshed(tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "machines_dir", lambda: tmp_path)
    made = machine.reference_speed("cpu", 1)
    path = tmp_path / f"{bench.fingerprint('cpu', 1)}.json"
    doc = json.loads(path.read_text())
    assert doc["calibration_ms"] == made.calibration_ms > 0 and doc["threads"] == 1
    assert "median of" in doc["method"] and doc["created_utc"] and doc["machine"]
    monkeypatch.setattr(machine, "_loaded", {})
    monkeypatch.setattr(machine, "measure_latency", lambda *a, **k: pytest.fail("measured again"))
    assert machine.reference_speed("cpu", 1) == made  # read back, not measured
    monkeypatch.undo()
    monkeypatch.setattr(machine, "machines_dir", lambda: tmp_path)
    path.write_text(json.dumps(doc | {"calibration_ms": 123.0}))
    monkeypatch.setattr(machine, "_loaded", {})
    assert machine.reference_speed("cpu", 1).calibration_ms == 123.0
    assert machine.reference_speed("cpu", 1, refresh=True).calibration_ms != 123.0


def test_the_variants_of_a_workload_are_measured_in_the_same_calibrated_rounds():
    quick = rounds(4)
    results = profile_variants(bench.BlockTarget("conv", 64, 7), 1,
                               [bench.Options(runtime="reference", stop=quick), bench.Options(runtime="fast",
                                                                                              stop=quick)],
                               memory=False, flops=False)
    assert [r.status for r in results] == ["ok", "ok"]
    assert [r.latency.runs for r in results] == [4, 4]  # one block each per round
    for r in results:
        row = r.row()
        assert row["latency_norm_ms"] == pytest.approx(row["latency_median_ms"] * row["machine_speed"])
        assert row["latency_norm_low_ms"] <= row["latency_norm_ms"] <= row["latency_norm_high_ms"]
        assert len(row["latency_rounds_norm_ms"]) == 4
        assert row["reference_calibration_ms"] == machine.reference_speed("cpu", row["threads"]).calibration_ms


def test_a_round_s_calibration_is_the_median_over_its_neighbours():
    edges = [4.0] * 5 + [8.0] + [4.0] * 5  # one slow calibration call among fast ones
    around = round_calibration(edges, window=2)
    assert len(around) == len(edges) - 1
    assert around == pytest.approx([4.0] * 10)  # a single call's outlier does not move any round
    slow = round_calibration([4.0] * 4 + [8.0] * 8, window=2)
    assert slow[-1] == pytest.approx(8.0) and slow[0] == pytest.approx(4.0)  # a lasting change is followed


def test_after_a_spinning_runtime_s_block_the_calibration_runs_untimed_to_let_it_settle():
    calibration_calls = []
    calibration = Calibration(lambda: calibration_calls.append(time.perf_counter()), reference_ms=1.0)
    measure_rounds([lambda: None, lambda: None], stop=rounds(3), warmup_s=0.0, min_block_s=0.0,
                   calibration=calibration, settle_s=[0.0, 0.05])
    plain = len(calibration_calls)
    calibration_calls.clear()
    measure_rounds([lambda: None, lambda: None], stop=rounds(3), warmup_s=0.0, min_block_s=0.0,
                   calibration=calibration, settle_s=[0.0, 0.0])
    assert plain > len(calibration_calls) + 100  # 3 x 50 ms of untimed calibration calls more


def test_onnxruntime_is_let_settle_after_its_calls():
    pytest.importorskip("onnxruntime")
    workload = bench.build_workload(bench.BlockTarget("conv", 64, 7), 1, bench.Options(runtime="onnxruntime"))
    assert workload.settle_s > 0
    assert bench.build_workload(bench.BlockTarget("conv", 64, 7), 1, bench.Options(runtime="fast")).settle_s == 0
