"""Training-free scores that track accuracy and cost seconds, plus #params and FLOPs.

* `synflow` (Tanaka et al., NeurIPS 2020, as a NAS proxy in Abdelfattah et al., "Zero-Cost Proxies
  for Lightweight NAS", ICLR 2021: Spearman rho ~0.76 with test accuracy on NAS-Bench-201 CIFAR-10):
  the weights made positive, an all-ones input, and the sum over parameters of |theta * dR/dtheta|
  with R the summed output. Data-free; computed in float64 and reported as its natural log.
* `naswot` (Mellor et al., "Neural Architecture Search without Training", ICML 2021: rho ~0.8 on
  NAS-Bench-201 CIFAR-10): log |det K| with K the Hamming-similarity kernel of the binary
  activation codes of a mini-batch. Container networks use GELU, so a unit is "on" when its
  GELU input is > 0.
* `params`, `flops`: the network's size and forward FLOPs (2 x fvcore multiply-adds, batch 1, the
  same count as bench.profile's `flops_2x_macs_fvcore`).

The random proxies are averaged over `inits` seeded initialisations. Every score is "higher is
better". A new proxy is one decorated function: `@register_proxy("name")`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn as nn

import bench
from bench.timing import intra_op_threads  # scoring uses the deployment's thread count
import container
from container import NetworkConfig

ProxyFn = Callable[[nn.Module, NetworkConfig, int, int, torch.device], float]


@dataclass(frozen=True)
class Proxy:
    name: str
    fn: ProxyFn
    random: bool  # depends on the initialisation, so it is averaged over several
    description: str


PROXIES: dict[str, Proxy] = {}


def register_proxy(name: str, *, random: bool = True, description: str = "") -> Callable[[ProxyFn], ProxyFn]:
    def decorate(fn: ProxyFn) -> ProxyFn:
        PROXIES[name] = Proxy(name, fn, random, description or (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return decorate


def list_proxies() -> list[str]:
    return sorted(PROXIES)


def _input_shape(config: NetworkConfig, batch: int) -> tuple[int, int, int, int]:
    return (batch, config.in_chans, config.image_size, config.image_size)


@register_proxy("synflow")
def synflow(model: nn.Module, config: NetworkConfig, batch: int, seed: int, device: torch.device) -> float:
    """log SynFlow: sum |theta * dR/dtheta| with |theta| and an all-ones input (float64)."""
    model = model.double().eval()  # eval: BatchNorm applies its (initial) running statistics
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
    model.zero_grad(set_to_none=True)
    x = torch.ones(_input_shape(config, 1), dtype=torch.float64, device=device)
    model(x).sum().backward()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for p in model.parameters():
        if p.grad is not None:
            total += (p * p.grad).abs().sum()
    value = float(total.detach())
    return math.log(value) if value > 0 else -math.inf


@register_proxy("naswot")
def naswot(model: nn.Module, config: NetworkConfig, batch: int, seed: int, device: torch.device) -> float:
    """NASWOT: log|det K| of the Hamming kernel of GELU activation codes over a mini-batch."""
    model = model.eval()
    batch = max(2, batch)
    kernel = torch.zeros(batch, batch, dtype=torch.float64, device=device)

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        codes = (inputs[0] > 0).flatten(1).to(torch.float64)
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.GELU)]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(_input_shape(config, batch), generator=generator).to(device)
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    sign, logdet = torch.linalg.slogdet(kernel)
    return float(logdet) if float(sign) > 0 else -math.inf


@register_proxy("params", random=False)
def params_proxy(model: nn.Module, config: NetworkConfig, batch: int, seed: int, device: torch.device) -> float:
    """#params."""
    return float(count_params(model))


@register_proxy("flops", random=False)
def flops_proxy(model: nn.Module, config: NetworkConfig, batch: int, seed: int, device: torch.device) -> float:
    """forward FLOPs at batch 1."""
    return float(count_flops(model, config, device))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, config: NetworkConfig, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs of one image (2 x fvcore multiply-adds, bench's convention)."""
    x = torch.zeros(_input_shape(config, 1), device=device)
    return bench.count_flops(model.eval(), x).flops_fvcore


@dataclass(frozen=True)
class Scores:
    score: float
    params: int
    flops: int
    spread: float = 0.0  # standard deviation of the score over initialisations


class Scorer(Protocol):
    """What the study asks of an objective: a score (higher is better), #params and FLOPs of a config."""

    objective: str

    def evaluate(self, config: NetworkConfig) -> Scores: ...


class ProxyScorer:
    """A registered proxy averaged over `inits` seeded initialisations, plus #params and FLOPs."""

    def __init__(self, objective: str = "naswot", *, inits: int = 3, batch_size: int = 8,
                 device: str = "cpu", seed: int = 0, threads: int | None = None):
        if objective not in PROXIES:
            raise ValueError(f"--objective {objective!r}: valid objectives: {', '.join(list_proxies())}")
        if inits < 1:
            raise ValueError(f"--proxy-inits {inits}: must be >= 1")
        if batch_size < 1:
            raise ValueError(f"--proxy-batch {batch_size}: must be >= 1")
        self.objective, self.inits, self.batch_size, self.seed = objective, inits, batch_size, seed
        self.device = torch.device(device)
        self.threads = threads

    def _build(self, config: NetworkConfig, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            return container.build(config).to(self.device)

    def size(self, config: NetworkConfig) -> tuple[int, int]:
        """(#params, FLOPs) without the score."""
        with intra_op_threads(self.threads):
            model = self._build(config, self.seed)
            return count_params(model), count_flops(model, config, self.device)

    def evaluate(self, config: NetworkConfig) -> Scores:
        with intra_op_threads(self.threads):
            return self._evaluate(config)

    def _evaluate(self, config: NetworkConfig) -> Scores:
        proxy = PROXIES[self.objective]
        model = self._build(config, self.seed)
        params = count_params(model)
        flops = count_flops(model, config, self.device)
        if self.objective == "params":
            return Scores(float(params), params, flops)
        if self.objective == "flops":
            return Scores(float(flops), params, flops)
        values = []
        for i in range(self.inits if proxy.random else 1):
            m = model if i == 0 else self._build(config, self.seed + i)
            values.append(proxy.fn(m, config, self.batch_size, self.seed + i, self.device))
            del m
        mean = sum(values) / len(values)
        spread = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) if math.isfinite(mean) else math.nan
        return Scores(mean, params, flops, spread)


__all__ = ["PROXIES", "Proxy", "ProxyScorer", "Scorer", "Scores", "count_flops", "count_params", "list_proxies",
           "naswot", "register_proxy", "synflow"]
