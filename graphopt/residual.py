"""Residual branches of a captured graph: the ``f`` of every ``y = s + f(x)`` that can go.

A branch is found at an ``aten.add`` of two tensors of the output's shape: one operand is
kept (the stream ``s``: the identity, or a projection shortcut), the other operand and every
node that only feeds it (its *exclusive* subgraph) is the branch. Removing it rewrites
``y = s + f(x)`` to ``y = s``: the graph keeps computing everything the rest of it needs
(an attention mask shared by every layer stays, because the other layers read it), and the
branch's exclusive nodes are erased.

Not every add is a residual: ``scores + mask`` has a heavy operand too. A branch qualifies
only when it reads the stream it is added to: one of its inputs is ``s`` or an ancestor of
``s`` (``x`` in ``proj(x) + f(x)``). Of the two orientations the heavier one is the branch,
so ``x + f(x)`` never drops ``x``. Branches that compute nothing (a bias or positional
embedding added) are not listed: removing them saves no MACs.

This is structure only; which branches to remove, and by what measure, is the
``remove_blocks`` pass's business.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from graphopt.analysis import analyze
from graphopt.ir import is_op, module_path, node_shape
from graphopt.quant.functionalize import functionalize_inplace

__all__ = ["Branch", "find_branches", "without_branch"]

aten = torch.ops.aten


@dataclass(frozen=True)
class Branch:
    """One removable residual branch: the add it feeds, the operand kept, what it costs."""

    name: str  # the module path its MAC-bearing nodes share (``layer2.0``), unique per graph
    add: str  # the add node's name
    keep: str  # the operand that stays: ``y = keep``
    nodes: frozenset[str]  # the branch's exclusive nodes (parameters included)
    macs: int  # per sample, as graphopt.analysis counts them


def find_branches(gm: GraphModule) -> list[Branch]:
    """Every removable residual branch of ``gm``, in graph order."""
    macs = {n.name: n.macs for n in analyze(gm).nodes}
    order = list(gm.graph.nodes)
    branches: list[Branch] = []
    used: set[str] = set()
    for node in gm.graph.nodes:
        if not _is_plain_add(node):
            continue
        best: tuple[int, Node, frozenset[Node]] | None = None
        for keep, drop in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if node_shape(keep) != node_shape(node):
                continue  # y = keep must have y's shape (no broadcasting added or lost)
            exclusive = _exclusive_subgraph(drop, node, order)
            cost = sum(macs.get(n.name, 0) for n in exclusive)
            if cost and _reads_stream(exclusive, keep) and (best is None or cost > best[0]):
                best = (cost, keep, exclusive)
        if best is not None:
            cost, keep, exclusive = best
            heavy = (module_path(n) for n in exclusive if macs.get(n.name, 0))
            name = _unique(_common_prefix(heavy) or node.name, used)
            names = frozenset(n.name for n in exclusive)
            branches.append(Branch(name, node.name, keep.name, names, cost))
    return branches


def without_branch(gm: GraphModule, branch: Branch, *, share_weights: bool = False) -> GraphModule:
    """``gm`` with ``branch`` removed (``y = keep``) and its dead nodes gone.

    ``share_weights`` builds a new GraphModule over a copy of the graph that shares ``gm``'s
    tensors: a cheap trial for scoring, which must not be trained or mutated. Otherwise
    ``gm`` itself is rewritten and the branch's parameters are deleted from it. The branch
    must have been found on this graph (its node names are looked up).
    """
    target = gm
    if share_weights:
        # Graph's deepcopy keeps node names and meta, and the pytree codegen of an exported
        # module (so outputs keep their structure); the tensors stay gm's, by reference.
        target = GraphModule(gm, copy.deepcopy(gm.graph))
    nodes = {n.name: n for n in target.graph.nodes}
    add, keep = nodes[branch.add], nodes[branch.keep]
    add.replace_all_uses_with(keep)
    target.graph.erase_node(add)
    # The branch's own nodes, users first. Not eliminate_dead_code: it keeps dropout (random,
    # so "impure") and would leave an inference graph's dead attention behind.
    attributes = set()
    for node in reversed(list(target.graph.nodes)):
        if node.name in branch.nodes:
            if node.op == "get_attr":
                attributes.add(str(node.target))
            target.graph.erase_node(node)
    if not share_weights:
        left = {str(n.target) for n in target.graph.nodes if n.op == "get_attr"}
        for dotted in attributes - left:
            owner_path, _, leaf = dotted.rpartition(".")
            owner = target.get_submodule(owner_path) if owner_path else target
            if hasattr(owner, leaf):
                delattr(owner, leaf)
    # ``y = relu_(x + f(x))`` is now ``relu_(x)``: it would write into the previous block's
    # output, which that block's backward needs (and, in a trial, into the caller's input).
    functionalize_inplace(target)
    target.recompile()
    return target


def _is_plain_add(node: Node) -> bool:
    if not is_op(node, [aten.add]) or len(node.args) < 2:
        return False
    a, b = node.args[0], node.args[1]
    alpha = node.kwargs.get("alpha", 1) if node.kwargs else 1
    return isinstance(a, Node) and isinstance(b, Node) and a is not b and alpha == 1


def _exclusive_subgraph(drop: Node, add: Node, order: list[Node]) -> frozenset[Node]:
    """``drop`` and every node all of whose users are in the set: one reverse sweep over the
    nodes before ``drop``, which decides every user before its input (users come after their
    inputs in topological order). Empty if ``drop`` has other users than ``add``."""
    if drop.op in ("placeholder", "get_attr") or set(drop.users) != {add}:
        return frozenset()
    members = {drop}
    for node in reversed(order[: order.index(drop)]):
        if node.op != "placeholder" and node.users and all(u in members for u in node.users):
            members.add(node)
    return frozenset(members)


def _reads_stream(exclusive: frozenset[Node], keep: Node) -> bool:
    """Does the branch take the stream ``keep`` (or what ``keep`` is computed from) as input?"""
    inputs = {
        source
        for member in exclusive
        for source in member.all_input_nodes
        if source not in exclusive and source.op != "get_attr"
    }
    if keep in inputs:
        return True
    seen: set[Node] = set()
    frontier = [keep]
    while frontier:
        current = frontier.pop()
        for source in current.all_input_nodes:
            if source in inputs:
                return True
            if source not in seen:
                seen.add(source)
                frontier.append(source)
    return False


def _common_prefix(paths: Iterable[str]) -> str:
    """The deepest module path all of ``paths`` share (``layer1.0`` for conv1, bn1, conv2)."""
    parts = [p.split(".") for p in paths if p]
    if not parts:
        return ""
    shared = parts[0]
    for other in parts[1:]:
        length = next(
            (i for i, (a, b) in enumerate(zip(shared, other, strict=False)) if a != b), None
        )
        shared = shared[: min(len(shared), len(other)) if length is None else length]
    return ".".join(shared)


def _unique(name: str, used: set[str]) -> str:
    candidate, i = name, 1
    while candidate in used:
        i += 1
        candidate = f"{name}#{i}"
    used.add(candidate)
    return candidate
