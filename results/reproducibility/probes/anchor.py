"""Probe: would a network as the calibration track other networks better than the calibration workload?

The scaled Container-Light family projected into the search space (9 networks, the largest multipliers first), each
timed as the search times a candidate (search.latency.DEFAULT_STOP, the machine's calibration) interleaved with a fixed
anchor network (the x0.75 / x0.5 member). Prints, per network, [median, normalised median, anchor's median, anchor's
normalised median]. Run it in several processes 20 s apart, nothing else running, and compare across processes the
spread of the normalised medians with that of the ratio to the anchor:

    for p in 1 2 3 4; do python results/reproducibility/probes/anchor.py > anchor$p.json; sleep 20; done
"""
import json

import torch

import container
from bench.machine import machine_calibration
from bench.timing import measure_rounds
from search.latency import DEFAULT_STOP
from search.scaled import base_network, scaled_family
from search.space import SearchSpace

ANCHOR = 5  # width x0.75, depth x0.5 in the order below


def timed(config):
    torch.manual_seed(0)
    model, x = container.optimize(container.build(config).eval()), torch.randn(1, 3, 224, 224)

    def call():
        with torch.inference_mode():
            return model(x)
    return call


def main() -> None:
    space = SearchSpace.default()
    projected: dict[str, object] = {}
    for member in reversed(scaled_family(base_network(space, 224))):
        config = space.config_from_params(space.nearest_params(member.config), 224)
        projected.setdefault(config.to_json(sort_keys=True), config)
    configs = list(projected.values())
    anchor, calibration = timed(configs[ANCHOR]), machine_calibration("cpu", 2)
    rows = []
    for config in configs:
        network, ref = measure_rounds([timed(config), anchor], threads=2, stop=DEFAULT_STOP, calibration=calibration)
        rows.append([network.median_ms, network.norm_ms, ref.median_ms, ref.norm_ms])
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
