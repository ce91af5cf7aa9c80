"""Probe: is a network's run-to-run spread a property of the process or of the instance?

One network (Container-Light at width x1, depth x0.5, projected into the search space), four fresh instances built
from the same seed, timed interleaved for 4 s through bench's timing path (measure_rounds with the machine's
calibration). Run it in several processes one after another, nothing else running, and compare the instances'
normalised medians within a process with the processes' medians:

    for p in 1 2 3 4; do python results/reproducibility/probes/instances.py $p; sleep 3; done
"""
import json
import sys

import torch

import container
from bench.machine import machine_calibration
from bench.timing import StopRule, measure_rounds
from search.scaled import base_network, scale_config
from search.space import SearchSpace

INSTANCES = 4


def main(seed: int) -> None:
    space = SearchSpace.default()
    config = space.config_from_params(space.nearest_params(scale_config(base_network(space, 224), 1.0, 0.5)), 224)
    calls = []
    for _ in range(INSTANCES):
        torch.manual_seed(0)
        model, x = container.optimize(container.build(config).eval()), torch.randn(1, 3, 224, 224)

        def call(model=model, x=x):
            with torch.inference_mode():
                return model(x)
        calls.append(call)
    stop = StopRule(rel_iqr=0.05, min_runs=5, min_time_s=4.0, max_time_s=4.0, rel_interval=0.0)
    stats = measure_rounds(calls, threads=2, stop=stop, calibration=machine_calibration("cpu", 2), seed=seed)
    print(json.dumps([[round(s.median_ms, 3), round(s.norm_ms, 3)] for s in stats]))  # as measured, normalised


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
