"""``UnitBook``: original unit numbers across rounds of pruning, and what is reported from them."""

from __future__ import annotations

import copy

import torch

from graphopt.ir import propagate_shapes
from graphopt.pruning import apply_plan, apply_removals, find_groups
from graphopt.pruning.units import UnitBook, channels_of
from tests.pruning import models
from tests.pruning.conftest import small_trace


def test_two_rounds_replay_in_one_shot_on_a_fresh_trace() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    fresh = copy.deepcopy(gm)
    book = UnitBook.start(find_groups(gm))
    for removals in ({"conv1": (1, 4), "conv2": (0,)}, {"conv1": (0, 1), "conv2": (3, 5)}):
        groups = find_groups(gm)
        assert book.mismatch(groups) is None
        apply_removals(gm, groups, removals)
        gm.recompile()
        propagate_shapes(gm, inputs)  # the next round's groups read the shapes
        book.record(removals)
    # round two's units 0 and 1 of conv1 were original units 0 and 2 (1 was already gone)
    assert book.removed == {"conv1": [1, 4, 0, 2], "conv2": [0, 4, 6]}
    assert book.gone("conv1") == 4 and book.original_units("conv1") == 16
    plan = book.plan(source="ConvChain")
    assert plan.removals == {"conv1": (0, 1, 2, 4), "conv2": (0, 4, 6)}
    assert plan.units == {"conv1": 16, "conv2": 16}
    apply_plan(fresh, plan)
    torch.testing.assert_close(fresh(*inputs), gm(*inputs), rtol=0, atol=0)


def test_channel_table_and_totals() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    book = UnitBook.start(find_groups(gm))
    book.record({"conv2": (2, 3, 7)})
    rows = {row["group"]: row for row in book.channels()}
    assert rows["conv2"] == {"group": "conv2", "before": 16, "after": 13, "ratio": 0.8125}
    assert rows["conv1"]["after"] == rows["conv1"]["before"] == 16
    assert book.channels_removed() == 3
    by_id = {g.id: g for g in book.groups}
    assert channels_of(by_id["conv2"], (2, 3, 7)) == 3
    assert book.frozen() == [
        {"group": g.id, "reason": "; ".join(g.frozen_reasons)} for g in book.groups if g.frozen
    ]


def test_groups_that_changed_other_than_by_pruning_are_named() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    book = UnitBook.start(find_groups(gm))
    book.record({"conv1": (0,)})
    assert book.mismatch(find_groups(gm)) == "group 'conv1' has 16 units, expected 15"
