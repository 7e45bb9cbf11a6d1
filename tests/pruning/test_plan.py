"""Pruning plans: data that prints, round-trips through JSON and replays on a fresh trace."""

from __future__ import annotations

import json

import pytest

from graphopt.errors import GraphoptError
from graphopt.pass_manager import PassManager
from graphopt.passes.prune_channels import PruneChannels
from graphopt.pruning import PruningPlan, apply_plan, find_groups
from tests.helpers import max_rel_diff
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


def test_plan_round_trips_through_json(tmp_path) -> None:
    plan = PruningPlan({"b": [3, 1, 1], "a": (0,), "empty": ()}, {"a": 4, "b": 8}, ("fc",), "Net")
    assert dict(plan.removals) == {"b": (1, 3), "a": (0,)}
    path = tmp_path / "plan.json"
    plan.save(path)
    assert json.loads(path.read_text())["format"] == "graphopt.pruning_plan/1"
    again = PruningPlan.load(path)
    assert again == plan
    assert "remove    2 of    8" in str(plan) and plan.units_removed == 3


def test_a_saved_plan_replays_on_a_fresh_trace_to_the_same_model(tmp_path) -> None:
    _, gm, inputs = zoo_trace("resnet18")
    result = PassManager([PruneChannels(ratio=0.3, round_to=8)]).run(gm, inputs)
    plan = PruningPlan.from_dict(result.stages[-1].stats["plan"])
    plan.save(tmp_path / "plan.json")
    _, fresh, _ = zoo_trace("resnet18")
    replayed = apply_plan(fresh, PruningPlan.load(tmp_path / "plan.json"))
    pruned = result.graph_module
    assert {k: v.shape for k, v in replayed.state_dict().items()} == {
        k: v.shape for k, v in pruned.state_dict().items()
    }
    assert max_rel_diff(pruned(*inputs), replayed(*inputs)) == 0


@pytest.mark.parametrize(
    ("removals", "units", "message"),
    [
        ({"nope": [0]}, {}, "does not have"),
        ({"conv1": [0]}, {"conv1": 99}, "different model"),
        ({"conv1": [16]}, {}, "do not exist"),
        ({"fc": [0]}, {}, "are frozen"),
        ({"conv1": list(range(16))}, {}, "every unit"),
    ],
)
def test_bad_plans_fail_loudly(removals, units, message) -> None:
    _, gm, _ = small_trace(models.ConvChain)
    with pytest.raises(GraphoptError, match=message):
        apply_plan(gm, PruningPlan(removals, units))


def test_malformed_json_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(GraphoptError, match="not a pruning plan"):
        PruningPlan.load(tmp_path / "x.json")
    with pytest.raises(GraphoptError, match="cannot read"):
        PruningPlan.load(tmp_path / "missing.json")


def test_plan_for_groups_records_unit_counts() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    plan = PruningPlan.for_groups(find_groups(gm), {"conv1": [2], "conv2": []})
    assert dict(plan.units) == {"conv1": 16}
    assert dict(plan.removals) == {"conv1": (2,)}
