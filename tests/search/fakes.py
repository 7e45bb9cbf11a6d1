"""A deterministic stand-in for a backend's latency: tests never time anything."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


class FakeLatency:
    """ "Seconds" = FLOPs · 1e-10 + ``per_layer`` · number of conv/linear layers.

    Proportional to the work like a compute-bound kernel, plus a fixed cost per layer like
    a kernel launch, which pruning channels cannot remove. Every call is recorded by the
    model's parameter shapes, so tests can check that no configuration is measured twice.
    """

    def __init__(self, per_layer: float = 1e-5) -> None:
        self.per_layer = per_layer
        self.calls: list[tuple] = []

    def shapes(self, module: nn.Module) -> tuple:
        return tuple((n, tuple(p.shape)) for n, p in module.named_parameters())

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
        self.calls.append(self.shapes(module))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
        layers = sum(1 for _, p in module.named_parameters() if p.dim() >= 2)
        return counter.get_total_flops() * 1e-10 + layers * self.per_layer
