"""Probe: does the calibration workload carry an offset of its own instance (its tensors' place in memory)?

Four instances of bench.timing.calibration_workload, timed in bench's interleaved rounds (measure_rounds) for about
20 s in one process; prints each instance's median per-call time (ms). Run it in several processes one after
another, nothing else running, and compare the spread inside a process with the spread between processes:

    for p in 1 2 3 4 5; do python results/reproducibility/probes/calibration_instances.py; done
"""
import json

from bench.timing import StopRule, calibration_workload, measure_rounds

INSTANCES = 4


def main() -> None:
    stats = measure_rounds([calibration_workload("cpu") for _ in range(INSTANCES)], threads=2, min_block_s=0.01,
                           stop=StopRule(min_runs=5, min_time_s=5.0, max_time_s=5.0))
    print(json.dumps([round(s.median_ms, 4) for s in stats]))


if __name__ == "__main__":
    main()
