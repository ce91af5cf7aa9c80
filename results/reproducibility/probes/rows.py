"""What the probes share: a row is (target, batch size, runtime), built as bench builds it and timed in bench's
randomized interleaved rounds with the machine's calibration (bench.timing.measure_rounds), 2 threads."""
from bench.machine import machine_calibration
from bench.targets import BlockTarget, NetworkTarget
from bench.timing import LatencyStats, StopRule, measure_rounds
from bench.workload import Options, Workload, build_workload

Row = tuple[BlockTarget | NetworkTarget, int, str]


def label(row: Row) -> str:
    target, batch, runtime = row
    return f"{target.name} b{batch} {runtime}"


def build(rows: list[Row], *, check: bool = False) -> list[Workload]:
    """Each row converted for its runtime (with `check`, its output checked against the reference module's)."""
    return [build_workload(target, batch, Options(runtime=runtime, threads=2), check=check)
            for target, batch, runtime in rows]


def time_rows(work: list[Workload], seconds: float) -> list[LatencyStats]:
    """Every workload in the same rounds for `seconds` in all (measure_rounds counts each one's share of the time)."""
    share = seconds / len(work)
    return measure_rounds([w.step for w in work], threads=2, calibration=machine_calibration("cpu", 2),
                          stop=StopRule(min_runs=5, min_time_s=share, max_time_s=share),
                          settle_s=[w.settle_s for w in work])
