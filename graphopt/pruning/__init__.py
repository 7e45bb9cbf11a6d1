"""Structured channel pruning in four parts (see STYLE.md, practice 7).

1. ``dependency`` / ``rules``: the channel-dependency graph over the ATen FX graph;
2. ``groups``: immutable groups of coupled channels, with frozen units and why;
3. ``importance`` / ``policy``: scores per unit, and how many units of which group go;
4. ``surgery``: stateless per-layer rewrites that slice parameters and size constants.

Post-training pruning without fine-tuning adds data: ``reconstruction`` scores channels by
the output error their removal causes on calibration inputs (ThiNet), and ``refit`` re-fits
the layers that read pruned channels by least squares and re-estimates BatchNorm statistics.

A ``PruningPlan`` (group id → units) is the decision as data: printed, saved, replayed with
``apply_plan``. The ``prune`` pass (``graphopt.passes.prune_channels``) runs all four::

    groups = find_groups(gm)                       # what can be pruned, and what is frozen
    plan = PruningPlan.for_groups(groups, {"layer1.0.conv1": (0, 5)})
    apply_plan(gm, plan)                           # in place: parameters really sliced
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.fx import GraphModule

from graphopt.pruning.dependency import ChannelGraph, Layout, build_channel_graph
from graphopt.pruning.groups import Member, PruningGroup, build_groups
from graphopt.pruning.importance import AGGREGATES, METHODS, compute_importance
from graphopt.pruning.plan import PruningPlan, apply_plan, check_plan
from graphopt.pruning.policy import CostModel, select_by_ratio, select_for_macs
from graphopt.pruning.rules import supported_ops
from graphopt.pruning.surgery import apply_removals

__all__ = [
    "AGGREGATES",
    "METHODS",
    "ChannelGraph",
    "CostModel",
    "Layout",
    "Member",
    "PruningGroup",
    "PruningPlan",
    "apply_plan",
    "apply_removals",
    "build_channel_graph",
    "build_groups",
    "check_plan",
    "compute_importance",
    "find_groups",
    "select_by_ratio",
    "select_for_macs",
    "supported_ops",
]


def find_groups(gm: GraphModule, *, ignore: Sequence[str] = ()) -> tuple[PruningGroup, ...]:
    """The pruning groups of a captured graph (``ignore``: module paths whose outputs stay)."""
    return build_groups(build_channel_graph(gm, ignore=ignore))
