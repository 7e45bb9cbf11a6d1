"""The latency lookup: keyed by per-group channel counts, each configuration measured once."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.pruning import find_groups
from graphopt.search.latency_cache import LatencyCache, configuration
from tests.pruning import models
from tests.pruning.conftest import small_trace


def test_a_configuration_is_measured_once() -> None:
    cache = LatencyCache()
    calls = []

    def measure() -> float:
        calls.append(1)
        return 0.25

    key = (("conv1", (16,)),)
    assert cache.get(key, measure) == 0.25 and cache.get(key, measure) == 0.25
    assert len(calls) == 1 and cache.measurements == 1 and cache.hits == 1 and key in cache


@pytest.mark.parametrize(
    ("value", "error"),
    [(0.0, ValueError), (float("nan"), ValueError), ("1ms", TypeError), (True, TypeError)],
)
def test_a_latency_must_be_positive_seconds(value, error) -> None:
    with pytest.raises(error, match="latency"):
        LatencyCache().get((), lambda: value)


def test_configuration_keys_are_per_group_channel_counts() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    groups = find_groups(gm)
    assert configuration(groups) == (("conv1", (16,)), ("conv2", (16,)), ("fc", (5,)))
    cut = configuration(groups, {"conv2": (0, 1, 2, 3)})
    assert cut == (("conv1", (16,)), ("conv2", (12,)), ("fc", (5,)))
    assert configuration(groups, {"conv2": (4, 5, 6, 7)}) == cut  # shapes only, not which


class CatAdd(nn.Module):
    """cat(a, b) + c: one group whose units live in a or b, and in c."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x)], dim=1) + self.c(x)
        return self.head(torch.relu(y)).mean((2, 3))


def test_a_concat_group_counts_each_layer() -> None:
    x = torch.randn(2, 3, 8, 8)
    group = next(g for g in find_groups(trace(CatAdd().eval(), (x,))) if g.id == "a")
    assert sorted(m.module for m in group.members if m.role == "out") == ["a", "b", "c"]
    from_a = dict(configuration([group], {"a": (0,)}))["a"]
    from_b = dict(configuration([group], {"a": (8,)}))["a"]
    assert sorted(from_a) == sorted(from_b) == [7, 8, 15] and from_a != from_b
