"""The exactness check of pruning tests: pruning dead channels must not change the output.

``prune_dead`` zeroes, in a copy of the graph, everything that produces the channels of the
units to remove (their rows or columns in the source layers, biases, the norms' affine
parameters, per-channel parameters), so those channels are 0 wherever they appear; then it
prunes them from another copy. The pruned graph must compute what the dense one with the
channels zeroed does, to 1e-5: the removed channels really had no other effect, and every
index map (pads, shuffles, transposed weights, tied parameters) lines up.
"""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor
from graphopt.pruning import PruningGroup, PruningPlan, apply_plan, find_groups
from graphopt.pruning.dependency import NO_DIM, layer_parameters
from tests.helpers import max_rel_diff

TOLERANCE = 1e-5


def zero_units(gm: GraphModule, groups: tuple[PruningGroup, ...], removals: dict) -> None:
    """Zero, in place, what produces the channels of ``removals`` (group id → units)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for group in groups:
        units = removals.get(group.id, ())
        for m in group.members:
            positions = sorted({p for u in units for p in m.indices[u]})
            if positions:
                for attr, dim in _producers(nodes[m.node], m.role, m.detail):
                    _zero(gm, attr, dim, positions)


def _producers(node: Node, role: str, detail: tuple) -> list[tuple[object, int]]:
    """(parameter, dim) pairs whose entries at a unit's positions make its channels."""
    if role == "out":
        weight, bias = layer_parameters(node)
        return [(weight, detail[0]), (bias, detail[1])]
    if role == "groups":
        return [(node.args[1], detail[1])]
    if role == "channelwise":
        return [(node.args[detail[0]], detail[1])]
    if role == "norm":
        name = node.target.overloadpacket.__name__
        first = 2 if name in ("layer_norm", "group_norm") else 1
        return [(node.args[first], 0), (node.args[first + 1], 0)]
    return []


def _zero(gm: GraphModule, attr: object, dim: int, positions: list[int]) -> None:
    tensor = get_tensor(gm, attr)
    if tensor is not None and dim != NO_DIM:
        with torch.no_grad():
            tensor.index_fill_(dim, torch.tensor(positions), 0.0)


def prune_dead(
    gm: GraphModule, inputs: tuple[torch.Tensor, ...], removals: dict
) -> tuple[GraphModule, GraphModule]:
    """(dense graph with the units zeroed, pruned graph); asserts they compute the same."""
    groups = find_groups(gm)
    dense = copy.deepcopy(gm)
    zero_units(dense, groups, removals)
    pruned = copy.deepcopy(dense)
    apply_plan(pruned, PruningPlan.for_groups(groups, removals))
    with torch.no_grad():
        expected, actual = dense(*inputs), pruned(*inputs)
    assert expected.abs().max() > 0
    assert max_rel_diff(expected, actual) <= TOLERANCE
    return dense, pruned


def group(gm: GraphModule, gid: str) -> PruningGroup:
    return next(g for g in find_groups(gm) if g.id == gid)
