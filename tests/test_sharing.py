"""Copy on write at tensor granularity (``graphopt.sharing``) and the pass manager's guard."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.capture import trace
from graphopt.errors import PassError
from graphopt.ir import iter_ops, set_tensor
from graphopt.pass_manager import PassManager
from graphopt.passes import Pass, PassContext, PassResult
from graphopt.sharing import TensorWatch, graph_tensors, private_copy, shared_copy

aten = torch.ops.aten


class WritesWithoutSaying(Pass):
    """Doubles the first linear weight in place and does not declare it: a buggy pass."""

    name = "writes_without_saying"
    exact = False

    def __init__(self, *, through_data: bool = False) -> None:
        self.through_data = through_data

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        weight = gm.get_parameter(str(next(iter_ops(gm, [aten.linear])).args[1].target))
        with torch.no_grad():
            if self.through_data:
                weight.data = weight.data * 2
            else:
                weight.mul_(2)
        return PassResult(gm, modified=True)


class DeclaresItsWrites(WritesWithoutSaying):
    name = "declares_its_writes"
    writes_in_place = True


class ReplacesTheWeight(WritesWithoutSaying):
    """Doubles the first linear weight by setting a new tensor: what passes must do."""

    name = "replaces_the_weight"

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        target = str(next(iter_ops(gm, [aten.linear])).args[1].target)
        set_tensor(gm, target, gm.get_parameter(target) * 2, parameter=True, copy=False)
        return PassResult(gm, modified=True)


@pytest.fixture
def traced() -> tuple[GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return trace(model, torch.randn(2, 4)), torch.randn(2, 4)


def _snapshot(gm: GraphModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in graph_tensors(gm).items()}


def _unchanged(gm: GraphModule, before: dict[str, torch.Tensor]) -> bool:
    now = graph_tensors(gm)
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def test_a_shared_copy_shares_the_tensors_and_nothing_else(traced) -> None:
    gm, x = traced
    copy = shared_copy(gm)
    assert copy is not gm and copy.graph is not gm.graph
    mine, theirs = graph_tensors(copy), graph_tensors(gm)
    assert mine.keys() == theirs.keys() and all(mine[k] is theirs[k] for k in mine)
    next(iter(copy.graph.nodes)).meta["mark"] = 1  # graph and meta are the copy's own
    assert "mark" not in next(iter(gm.graph.nodes)).meta
    private = private_copy(gm)
    assert all(graph_tensors(private)[k] is not theirs[k] for k in theirs)
    assert torch.equal(copy(x), gm(x)) and torch.equal(private(x), gm(x))


def test_the_watch_sees_in_place_writes_and_new_data(traced) -> None:
    gm, _ = traced
    watch = TensorWatch(gm)
    assert watch.changed() == []
    with torch.no_grad():
        gm.get_parameter("0.bias").add_(1)
    gm.get_parameter("2.weight").data = torch.zeros(3, 8)
    assert sorted(watch.changed()) == ["0.bias", "2.weight"]


@pytest.mark.parametrize("through_data", [False, True])
def test_a_pass_writing_into_a_shared_tensor_is_named(traced, through_data: bool) -> None:
    gm, x = traced
    with pytest.raises(PassError, match=r"\[writes_without_saying\] wrote in place into tensor"):
        PassManager([WritesWithoutSaying(through_data=through_data)]).run(gm, x)


def test_a_pass_that_declares_its_writes_gets_a_private_copy(traced) -> None:
    gm, x = traced
    before = _snapshot(gm)
    result = PassManager([DeclaresItsWrites()]).run(gm, x)
    assert _unchanged(gm, before)
    assert result.stages[-1].relative_error > 0.1


def test_a_pass_that_replaces_tensors_shares_the_rest(traced) -> None:
    gm, x = traced
    before = _snapshot(gm)
    result = PassManager([ReplacesTheWeight()]).run(gm, x)
    out = result.graph_module
    assert _unchanged(gm, before)
    assert out.get_parameter("0.weight") is not gm.get_parameter("0.weight")
    assert out.get_parameter("2.weight") is gm.get_parameter("2.weight")  # shared, not copied
    assert torch.equal(out.get_parameter("0.weight"), 2 * gm.get_parameter("0.weight"))
