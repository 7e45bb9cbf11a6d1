"""Policy: valid removal counts, ratio selection, the MAC cost model and the greedy search."""

from __future__ import annotations

import pytest
import torch

from graphopt.analysis import analyze
from graphopt.ir import propagate_shapes
from graphopt.pruning import (
    CostModel,
    apply_removals,
    compute_importance,
    find_groups,
    select_by_ratio,
    select_for_macs,
)
from graphopt.pruning.groups import Member, PruningGroup
from graphopt.pruning.policy import removal_order, valid_removals
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


def _group(units: int, width: int = 1, frozen: tuple[int, ...] = ()) -> PruningGroup:
    indices = tuple(tuple(range(u * width, (u + 1) * width)) for u in range(units))
    member = Member("conv", "conv", "aten.conv2d", "out", units * width, indices)
    return PruningGroup("g", units, (width,) * units, (member,), frozen, ("x",) if frozen else ())


def test_valid_removals_respect_round_to_min_channels_and_one_unit() -> None:
    g = _group(24)
    assert valid_removals(g, list(range(24)), 16, 1) == [0, 8]
    assert valid_removals(g, list(range(24)), 8, 1) == [0, 8, 16]
    assert valid_removals(g, list(range(24)), 1, 20) == [0, 1, 2, 3, 4]
    assert valid_removals(_group(4), list(range(4)), 1, 1) == [0, 1, 2, 3]
    heads = _group(4, width=32)  # a head is 32 channels: any head count is a multiple of 16
    assert valid_removals(heads, list(range(4)), 16, 1) == [0, 1, 2, 3]


def test_ratio_selects_the_lowest_scored_prunable_units() -> None:
    g = _group(8, frozen=(0,))
    scores = {"g": torch.tensor([0.0, 5, 1, 7, 2, 6, 3, 4], dtype=torch.float64)}
    assert select_by_ratio([g], scores, 0.5) == {"g": (2, 4, 6, 7)}
    assert select_by_ratio([g], scores, 0.5, round_to=4) == {"g": (2, 4, 6, 7)}
    assert select_by_ratio([g], scores, 0.3, round_to=4) == {}
    assert select_by_ratio([g], scores, 0.0) == {}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "transformer", "densenet_tiny"])
def test_cost_model_predicts_the_macs_of_the_pruned_graph(name) -> None:
    _, gm, inputs = zoo_trace(name)
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l1")
    removals = select_by_ratio(groups, scores, 0.4)
    cost = CostModel(gm, groups)
    for gid, units in removals.items():
        cost.remove(gid, units)
    apply_removals(gm, groups, removals)
    gm.recompile()
    propagate_shapes(gm, inputs)
    assert round(cost.total) == analyze(gm).macs


def test_cost_model_on_grouped_convs_and_splits() -> None:
    _, gm, inputs = small_trace(models.GroupedAndSplit)
    groups = find_groups(gm)
    removals = {"conv1": (1, 3), "left": (0, 5)}
    cost = CostModel(gm, groups)
    for gid, units in removals.items():
        cost.remove(gid, units)
    apply_removals(gm, groups, removals)
    gm.recompile()
    propagate_shapes(gm, inputs)
    assert round(cost.total) == analyze(gm).macs


def test_greedy_search_stops_at_the_target_and_reports_unreachable_ones() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l2")
    cost = CostModel(gm, groups)
    plan, reached = select_for_macs(groups, scores, cost, 0.6, round_to=8)
    assert reached and 0.57 <= cost.total / cost.original <= 0.6
    assert all(len(u) % 8 == 0 for u in plan.values())
    cost = CostModel(gm, groups)
    _, reached = select_for_macs(groups, scores, cost, 0.001, round_to=8, min_channels=8)
    assert not reached


def _flat(groups) -> dict[str, torch.Tensor]:
    return {g.id: torch.ones(g.num_units, dtype=torch.float64) for g in groups}


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_cost_aware_reaches_the_target_and_predicts_the_macs(name) -> None:
    _, gm, inputs = zoo_trace(name)
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l2")
    cost = CostModel(gm, groups)
    plan, reached = select_for_macs(groups, scores, cost, 0.5, selection="cost_aware")
    assert reached and 0.45 <= cost.total / cost.original <= 0.5
    apply_removals(gm, groups, plan)
    gm.recompile()
    propagate_shapes(gm, inputs)
    assert round(cost.total) == analyze(gm).macs


def test_cost_aware_prefers_the_group_with_most_macs_per_channel_when_scores_tie() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = [g for g in reversed(find_groups(gm)) if not g.frozen]  # the light ones first
    cost = CostModel(gm, groups)
    per_unit = {g.id: cost.saving(g.id, removal_order(g, _flat(groups)[g.id])[:1]) for g in groups}
    one_step = 1 - 1 / cost.original  # any single unit reaches it
    heaviest = max(per_unit, key=per_unit.get)
    plan, _ = select_for_macs(groups, _flat(groups), cost, one_step, selection="cost_aware")
    assert list(plan) == [heaviest] and len(plan[heaviest]) == 1
    plan, _ = select_for_macs(groups, _flat(groups), CostModel(gm, groups), one_step)
    assert list(plan) == [groups[0].id]  # importance alone: a tie, the first group goes
    assert per_unit[groups[0].id] < max(per_unit.values())


def test_cost_aware_respects_round_to_and_min_channels() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l1")
    cost = CostModel(gm, groups)
    plan, reached = select_for_macs(
        groups, scores, cost, 0.4, round_to=8, min_channels=16, selection="cost_aware"
    )
    assert reached and plan
    by_id = {g.id: g for g in groups}
    for gid, units in plan.items():
        kept = by_id[gid].num_units - len(units)  # resnet18: one channel per unit
        assert kept % 8 == 0 and kept >= 16, gid


def test_cost_aware_lazy_search_equals_the_eager_greedy() -> None:
    """Re-ranking only the popped step gives the plan of re-ranking every step every time."""
    _, gm, _ = zoo_trace("mobilenet_v2")
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l2")
    opts = {"round_to": 8, "min_channels": 1}
    lazy, _ = select_for_macs(
        groups, scores, CostModel(gm, groups), 0.5, selection="cost_aware", **opts
    )
    cost, done = CostModel(gm, groups), {g.id: 0 for g in groups}
    state = {}
    for g in groups:
        order = removal_order(g, scores[g.id])
        mean = float(scores[g.id][list(g.prunable_units)].mean()) if g.prunable_units else 1.0
        state[g.id] = (order, valid_removals(g, order, **opts), mean if mean > 0 else 1.0)
    while cost.total > 0.5 * cost.original:
        best = None
        for k, g in enumerate(groups):
            order, steps, mean = state[g.id]
            if done[g.id] + 1 >= len(steps):
                continue
            units = order[steps[done[g.id]] : steps[done[g.id] + 1]]
            saved = cost.saving(g.id, units)
            if saved > 0:
                key = (float(scores[g.id][units].sum()) / mean / saved, k)
                best = min(best, (key, g.id, units)) if best else (key, g.id, units)
        _, gid, units = best
        cost.remove(gid, units)
        done[gid] += 1
    eager = {gid: tuple(sorted(state[gid][0][: state[gid][1][n]])) for gid, n in done.items() if n}
    assert lazy == eager


def test_selection_is_validated() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = find_groups(gm)
    with pytest.raises(ValueError, match="selection"):
        select_for_macs(groups, _flat(groups), CostModel(gm, groups), 0.5, selection="flops")


def test_a_step_that_overshoots_waits_so_the_plan_lands_within_the_tolerance() -> None:
    """The transformer's residual stream ranked first, with a step so big that taking it
    lands far below the target: plain greedy takes it and undershoots by most of the step;
    with the tolerance the smaller steps of the other groups fill the gap instead."""
    _, gm, _ = zoo_trace("transformer")
    groups = [g for g in find_groups(gm) if not g.frozen]
    probe = CostModel(gm, groups)
    steps = {
        g.id: probe.saving(g.id, removal_order(g, _flat(groups)[g.id])[:16])
        for g in groups
        if g.num_units >= 32
    }
    stream = max(steps, key=steps.get)
    assert steps[stream] > 0.05 * probe.original  # big enough to overshoot a lot
    scores = _flat(groups)
    scores[stream] = scores[stream] * 1e-3  # the cheapest step of all
    target = 1 - 0.5 * steps[stream] / probe.original  # half the stream's step is enough
    greedy = CostModel(gm, groups)
    plan, reached = select_for_macs(groups, scores, greedy, target, round_to=16, tolerance=None)
    assert reached and stream in plan
    assert greedy.total / greedy.original < target - 0.02
    fitted = CostModel(gm, groups)
    plan, reached = select_for_macs(groups, scores, fitted, target, round_to=16)
    assert reached and stream not in plan
    assert target - 0.01 <= fitted.total / fitted.original <= target


def test_when_only_overshooting_steps_are_left_the_closest_one_goes() -> None:
    """With no tolerance every step overshoots a target half the smallest step away: the
    one that lands closest (the smallest) goes, not the first in rank."""
    _, gm, _ = zoo_trace("resnet18")
    groups = [g for g in find_groups(gm) if not g.frozen]
    probe = CostModel(gm, groups)
    first = {g.id: probe.saving(g.id, removal_order(g, _flat(groups)[g.id])[:16]) for g in groups}
    smallest = min(first, key=first.get)
    target = 1 - 0.5 * first[smallest] / probe.original  # every step overshoots
    cost = CostModel(gm, groups)
    plan, reached = select_for_macs(groups, _flat(groups), cost, target, round_to=16, tolerance=0.0)
    assert reached and list(plan) == [smallest] and len(plan[smallest]) == 16
    assert list(select_for_macs(groups, _flat(groups), CostModel(gm, groups), target)[0]) == [
        groups[0].id
    ]  # within the default tolerance, rank decides
