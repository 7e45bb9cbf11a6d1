"""The NetAdapt search itself: the choice per iteration, steps, stopping, fidelity, bracketing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.capture import trace
from graphopt.pruning import CostModel, find_groups
from graphopt.search.latency_cache import LatencyCache
from graphopt.search.netadapt import SearchOptions, _fewest_reaching, output_fidelity, search
from tests.search.fakes import FakeLatency


class ThreeConvs(nn.Module):
    """Three 32-channel convs, pooled into a linear head: three prunable groups."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.relu(self.conv3(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture(scope="module")
def three():
    torch.manual_seed(0)
    inputs = (torch.randn(2, 3, 8, 8),)
    return trace(ThreeConvs().eval(), inputs), inputs


def _macs(key, build, macs: float) -> float:
    return macs


def _width_score(weights: dict[str, float]):
    """Metric = −Σ weight · channels removed: a known preference between layers."""

    def score(gm) -> float:
        return -sum(w * (32 - gm.get_parameter(f"{n}.weight").shape[0]) for n, w in weights.items())

    return score


def test_each_iteration_keeps_the_best_scored_candidate_that_reaches_its_aim(three) -> None:
    gm, inputs = three
    score = _width_score({"conv1": 3.0, "conv2": 1.0, "conv3": 2.0})
    options = SearchOptions(kind="macs", target=0.5, step=0.1, round_to=4)
    result = search(gm, inputs, _macs, score, options)
    assert result.budget_met and result.macs_after <= 0.5 * result.macs_before
    for row in result.trace:
        tried = [c for c in result.candidates if c["iteration"] == row["iteration"]]
        assert len(tried) == row["candidates"] == 3
        reaching = [c for c in tried if c["meets_step"]]
        assert row["metric"] == max(c["metric"] for c in reaching)
        assert row["macs"] <= row["aim"] + 1e-12
        chosen = next(c for c in tried if c["group"] == row["group"])
        assert chosen["channels_after"] % 4 == 0 and chosen["metric"] == row["metric"]
    assert result.trace[0]["group"] == "conv2"  # the cheapest layer to lose goes first
    assert [c["group"] for c in result.chosen[1:]] == [t["group"] for t in result.trace]
    assert result.chosen[0]["macs"] == 1.0 and result.plan.removals


def test_candidates_remove_just_enough_for_the_step(three) -> None:
    gm, inputs = three
    options = SearchOptions(kind="macs", target=0.9, step=0.1, round_to=1, max_iterations=1)
    result = search(gm, inputs, _macs, lambda m: 0.0, options)
    groups = find_groups(gm)
    assert len(result.candidates) == 3
    for c in result.candidates:  # one channel fewer would miss the aim of 0.9
        removed = c["channels_before"] - c["channels_after"]
        assert c["macs"] <= 0.9 and c["units_removed"] == removed
        fewer = CostModel(gm, groups)
        fewer.remove(c["group"], range(removed - 1))
        assert fewer.total / fewer.original > 0.9


def test_the_step_decays_and_aims_follow_it(three) -> None:
    gm, inputs = three
    options = SearchOptions(kind="macs", target=0.4, step=0.2, step_decay=0.5, round_to=2)
    result = search(gm, inputs, _macs, lambda m: 0.0, options)
    steps = [t["step"] for t in result.trace]
    assert steps[:3] == [0.2, 0.1, 0.05]
    previous = 1.0
    for t in result.trace:
        assert t["aim"] == pytest.approx(max(0.4, previous - t["step"]), abs=1e-6)
        previous = t["macs"]


def test_running_out_of_iterations_returns_the_closest_result(three) -> None:
    gm, inputs = three
    options = SearchOptions(kind="macs", target=0.3, step=0.05, round_to=4, max_iterations=2)
    result = search(gm, inputs, _macs, lambda m: 0.0, options)
    assert not result.budget_met and len(result.trace) == 2
    assert "max_iterations=2" in result.message and result.macs_after < result.macs_before
    assert result.graph_module is not gm and gm.get_parameter("conv1.weight").shape[0] == 32


def test_latency_is_measured_once_per_configuration(three) -> None:
    gm, inputs = three
    latency, cache = FakeLatency(per_layer=1e-7), LatencyCache()

    def cost(key, build, macs):
        return cache.get(key, lambda: latency(build(), inputs))

    options = SearchOptions(kind="latency", target=0.5, step=0.1, round_to=2)
    result = search(gm, inputs, cost, lambda m: 0.0, options)
    assert result.budget_met and result.cost_after <= 0.5 * result.cost_before
    assert len(latency.calls) == cache.measurements == len(set(latency.calls))
    assert cache.hits > 0  # a group cut again re-proposes configurations already measured
    assert all("latency" in c for c in result.candidates)


def test_output_fidelity_is_the_cosine_of_the_outputs(three) -> None:
    gm, inputs = three
    score = output_fidelity(gm, [inputs, (torch.randn(2, 3, 8, 8),)])
    assert score(gm) == 1.0

    class Negated(nn.Module):
        def forward(self, x):
            return -gm(x)

    assert score(Negated()) == pytest.approx(-1.0)


@pytest.mark.parametrize("aim", [0.05, 0.5, 0.61, 0.99, 1.5])
def test_the_bracket_finds_the_fewest_reaching_the_aim(aim) -> None:
    macs = [1.0 - 0.03 * (i + 1) for i in range(32)]
    cost = [0.1 + 0.9 * m + 0.002 * math.sin(7 * i) for i, m in enumerate(macs)]  # ~affine
    probed = []

    def cost_of(i: int) -> float:
        probed.append(i)
        return cost[i]

    i = _fewest_reaching(cost_of, macs, 1.0, 1.0, aim)
    reaching = [j for j, c in enumerate(cost) if c <= aim]
    assert i == (reaching[0] if reaching else 31)
    assert len(set(probed)) <= 4  # bisection over 32 counts probes 6
