"""Iterative pruning: the polynomial schedule, the per-step callback, the final target and plan."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.errors import PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes.base import PassContext, get_pass
from graphopt.passes.prune_channels import PruneChannels
from graphopt.pruning import apply_plan, compute_importance, find_groups
from graphopt.pruning.plan import PruningPlan
from graphopt.pruning.policy import schedule, select_by_ratio
from graphopt.pruning.surgery import apply_removals
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


def _run(gm, inputs, **options):
    result = PassManager([PruneChannels(**options)]).run(gm, inputs)
    return result.graph_module, result.stages[-1], result.stages[0]


def _shapes(gm) -> dict[str, tuple[int, ...]]:
    return {k: tuple(p.shape) for k, p in gm.named_parameters()}


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.0}, "steps"),
        ({"steps": True}, "steps"),
        ({"schedule_power": 0}, "schedule_power"),
        ({"schedule_power": -1.0}, "schedule_power"),
        ({"schedule_power": "3"}, "schedule_power"),
        ({"schedule_power": math.inf}, "schedule_power"),
        ({"schedule_power": math.nan}, "schedule_power"),
        ({"callback": "print"}, "callback"),
    ],
)
def test_bad_iterative_options_are_refused_by_name(options, option) -> None:
    with pytest.raises(ValueError, match=option):
        PruneChannels(ratio=0.5, **options)


def test_iterative_options_through_the_registry() -> None:
    p = get_pass("prune", target_macs=0.5, steps=3, schedule_power=3)
    assert (p.steps, p.schedule_power, p.callback) == (3, 3.0, None)
    with pytest.raises(RecipeError, match="steps"):
        get_pass("prune", ratio=0.5, steps=0)


def test_schedule_is_polynomial_and_ends_at_the_target() -> None:
    assert [schedule(i, 3, 1.0) for i in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1])
    cubic = [schedule(i, 3, 3.0) for i in (1, 2, 3)]  # Zhu & Gupta: large steps first
    assert cubic == pytest.approx([1 - (2 / 3) ** 3, 1 - (1 / 3) ** 3, 1])
    assert cubic[0] > 0.5 and schedule(1, 1, 3.0) == 1.0


# --------------------------------------------------------------------------- final target


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "transformer"])
def test_ratio_in_three_steps_ends_with_the_one_shot_shapes(name) -> None:
    """Unit counts are cumulative against the original model, so k steps end where 1 does."""
    _, gm, inputs = zoo_trace(name)
    opts = {"ratio": 0.5, "round_to": 8} if name != "transformer" else {"ratio": 0.5}
    one, one_stage, _ = _run(gm, inputs, **opts)
    three, stage, first = _run(gm, inputs, steps=3, schedule_power=3.0, **opts)
    assert _shapes(three) == _shapes(one)
    assert stage.macs == one_stage.macs and stage.params == one_stage.params < first.params
    assert stage.stats["macs_after"] == stage.macs and stage.stats["steps"] == 3
    removed = [s["units_removed"] for s in stage.stats["schedule"]]
    assert sum(removed) == stage.stats["units_removed"] and removed[0] > removed[-1] > 0


@pytest.mark.parametrize("name", ["resnet18", "transformer"])
def test_the_plan_is_in_original_numbering_and_replays_in_one_shot(name) -> None:
    _, gm, inputs = zoo_trace(name)
    pruned, stage, _ = _run(gm, inputs, ratio=0.4, steps=3, importance="l1")
    plan = PruningPlan.from_dict(stage.stats["plan"])
    _, fresh, _ = zoo_trace(name)
    replayed = apply_plan(fresh, plan)
    assert _shapes(replayed) == _shapes(pruned)
    with torch.no_grad():
        assert torch.allclose(replayed(*inputs), pruned(*inputs), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "power"), [("resnet18", 1.0), ("mobilenet_v2", 3.0)])
def test_target_macs_in_steps_calls_back_with_decreasing_macs(name, power) -> None:
    _, gm, inputs = zoo_trace(name)
    calls: list[tuple[int, int]] = []

    def callback(graph: torch.fx.GraphModule, step: int) -> None:
        out = graph(*inputs)  # recompiled: it runs
        assert out.shape == (1, 1000) and torch.isfinite(out).all()
        calls.append((step, analyze(graph).macs))  # shapes re-propagated: analysable

    _, stage, first = _run(
        gm, inputs, target_macs=0.5, round_to=8, steps=3, schedule_power=power, callback=callback
    )
    assert [step for step, _ in calls] == [1, 2, 3]
    macs = [first.macs] + [m for _, m in calls]
    assert all(a > b for a, b in itertools.pairwise(macs))
    assert calls[-1][1] == stage.macs and 0.47 <= stage.macs / first.macs <= 0.5
    for (step, m), entry in zip(calls, stage.stats["schedule"], strict=True):
        kept = 1 - 0.5 * schedule(step, 3, power)
        assert entry["target"] == pytest.approx(kept) and entry["macs"] == m
        assert kept - 0.05 <= m / first.macs <= kept  # each step hits its own target


def test_unreachable_intermediate_target_names_the_step() -> None:
    _, _, inputs = small_trace(models.ConvChain)
    gm = trace(nn.Sequential(nn.Conv2d(3, 4, 3)).eval(), inputs)
    with pytest.raises(PassError, match=r"cannot be reached \(step 1 of 2 aims at 0\.75\)"):
        PruneChannels(target_macs=0.5, steps=2).run(gm, PassContext(inputs))


# --------------------------------------------------------------------------- steps and callback


def test_one_step_is_one_shot_pruning() -> None:
    """steps=1 selects exactly what the policy does on the original graph, and calls back once."""
    _, gm, inputs = zoo_trace("resnet18")
    groups = find_groups(gm)
    scores, _ = compute_importance(gm, groups, "l2")
    removals = select_by_ratio(groups, scores, 0.3, round_to=8)
    calls = []
    pruned, stage, _ = _run(
        gm, inputs, ratio=0.3, round_to=8, callback=lambda g, i: calls.append(i)
    )
    assert calls == [1] and stage.stats["steps"] == 1
    assert {g: tuple(v["remove"]) for g, v in stage.stats["plan"]["groups"].items()} == removals
    apply_removals(gm, groups, removals)
    assert _shapes(gm) == _shapes(pruned)


def test_importance_is_recomputed_after_the_callback() -> None:
    """A callback that zeroes two surviving channels (as fine-tuning might) gets them pruned."""
    model, gm, inputs = small_trace(models.ConvChain)
    original = model.conv1.weight.detach().clone()
    zeroed: list[int] = []

    def callback(graph: torch.fx.GraphModule, step: int) -> None:
        if step != 1:
            return
        w = graph.get_parameter("conv1.weight")
        assert w.shape[0] == 12  # step 1 of 2 at ratio 0.5: 4 of 16 channels
        with torch.no_grad():
            for current in (0, 1):  # the original index of a surviving row: find its copy
                zeroed.append(next(i for i in range(16) if torch.equal(original[i], w[current])))
                w[current] = 0
                graph.get_parameter("conv1.bias")[current] = 0
                graph.get_parameter("conv2.weight")[:, current] = 0

    _, stage, _ = _run(gm, inputs, ratio=0.5, steps=2, importance="l1", callback=callback)
    removed = stage.stats["plan"]["groups"]["conv1"]["remove"]
    assert len(removed) == 8 and set(zeroed) <= set(removed)
    assert [s["units_removed"] for s in stage.stats["schedule"]] == [8, 8]  # 4 + 4 per group
