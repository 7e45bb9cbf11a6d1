"""IR helpers: the garbage-collector pause used around capture and pruning, shape propagation."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.ir import paused_gc, propagate_shapes
from graphopt.pruning import PruningPlan, apply_plan, find_groups


def test_paused_gc_pauses_nests_and_restores() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block does not end the outer pause
    assert gc.isenabled()
    with pytest.raises(RuntimeError), paused_gc():
        raise RuntimeError("boom")
    assert gc.isenabled()  # restored on errors too


def test_paused_gc_leaves_a_disabled_collector_off() -> None:
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


class _PadUpsample(nn.Module):
    """A computed-size pad and a bilinear upsample: composite ops whose C++ kernels read sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.relu(self.conv1(x)), (1, 1, 1, 1))
        return self.conv2(F.interpolate(x, scale_factor=2, mode="bilinear"))


def test_propagating_new_channel_counts_keeps_the_batch_symbolic_for_every_graph() -> None:
    gm = trace(_PadUpsample().eval(), (torch.randn(2, 3, 10, 10),))
    original = analyze(gm).macs
    pruned = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    groups = find_groups(pruned)
    apply_plan(pruned, PruningPlan.for_groups(groups, {"conv1": [0, 1]}))
    propagate_shapes(pruned, (torch.randn(2, 3, 10, 10),))
    batch = [
        n.meta["val"].shape[0]
        for n in pruned.graph.nodes
        if n.op != "get_attr" and isinstance(n.meta.get("val"), torch.Tensor)
    ]
    assert batch and all(isinstance(b, torch.SymInt) for b in batch)
    assert analyze(gm).macs == original  # the capture's ShapeEnv was not specialised either
    assert analyze(pruned).macs < original
