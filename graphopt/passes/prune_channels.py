"""Structured channel pruning: remove whole channels, attention heads and conv groups.

The pass composes the four parts of ``graphopt.pruning``:

1. the channel-dependency graph over the ATen FX graph (``dependency`` + ``rules``): which
   channels are coupled (residual adds, concats, grouped convs, heads, flatten → linear) and
   which are frozen (model output, graph inputs, unknown ops, ``ignore``);
2. immutable groups of coupled channels (``groups``);
3. importance scores and a policy (``importance``, ``policy``): per group the lowest-scored
   units, as many as ``ratio`` says, or globally until ``target_macs`` is met;
4. stateless surgery per layer type (``surgery``): parameters are sliced, size constants of
   views, splits, ``groups`` and ``num_groups`` rewritten — the model is really smaller.

What it decided is a ``PruningPlan`` (``stats["plan"]``): data that prints, saves to JSON and
replays on a fresh trace with ``graphopt.pruning.apply_plan``. Pruning changes the outputs, so
the pass is approximate (``exact = False``): the pass manager measures the error. Removing
channels whose weights are all zero changes nothing (up to float rounding).

Stats: groups found, pruned, units and channels removed, MACs and parameters before and after,
fully and partially frozen groups with their reasons, the plan, and the groups for which
``bn_scale`` had no BatchNorm and fell back to l2. ``macs_after`` is the policy's cost model's
prediction, which equals ``analyze`` on the pruned graph (tested); the pass leaves
recompiling and shape propagation to the pass manager, like every pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.fx import GraphModule

from graphopt.errors import PassError
from graphopt.ir import count_parameters
from graphopt.passes.base import Pass, PassContext, PassResult, register_pass
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.groups import PruningGroup, build_groups
from graphopt.pruning.importance import AGGREGATES, METHODS, compute_importance
from graphopt.pruning.plan import PruningPlan
from graphopt.pruning.policy import CostModel, select_by_ratio, select_for_macs
from graphopt.pruning.surgery import apply_removals

__all__ = ["PruneChannels"]


@register_pass
class PruneChannels(Pass):
    """Remove the least important channels, heads and groups (parameters really sliced)."""

    name = "prune"
    exact = False

    def __init__(
        self,
        *,
        importance: str = "l2",
        ratio: float | None = None,
        target_macs: float | None = None,
        round_to: int = 1,
        min_channels: int = 1,
        ignore: Sequence[str] = (),
        aggregate: str = "mean",
    ) -> None:
        if importance not in METHODS:
            raise ValueError(f"importance must be one of {', '.join(METHODS)}, got {importance!r}")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        if (ratio is None) == (target_macs is None):
            raise ValueError(
                "give exactly one of ratio (fraction of each group's channels to remove) and "
                f"target_macs (fraction of MACs to keep); got ratio={ratio!r}, "
                f"target_macs={target_macs!r}"
            )
        if ratio is not None and not (_is_number(ratio) and 0 <= ratio < 1):
            raise ValueError(f"ratio must be a number in [0, 1), got {ratio!r}")
        if target_macs is not None and not (_is_number(target_macs) and 0 < target_macs <= 1):
            raise ValueError(f"target_macs must be a number in (0, 1], got {target_macs!r}")
        for option, value in (("round_to", round_to), ("min_channels", min_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{option} must be an int >= 1, got {value!r}")
        if isinstance(ignore, str) or not all(isinstance(p, str) and p for p in ignore):
            raise ValueError(
                f"ignore must be a list of module paths such as ['fc'], got {ignore!r}"
            )
        self.importance = importance
        self.ratio = None if ratio is None else float(ratio)
        self.target_macs = None if target_macs is None else float(target_macs)
        self.round_to = round_to
        self.min_channels = min_channels
        self.ignore = tuple(ignore)
        self.aggregate = aggregate

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        cg = build_channel_graph(gm, ignore=self.ignore)
        unmatched = [p for p in self.ignore if p not in cg.ignored_matches]
        if unmatched:
            layers = sorted({s.module for s in cg.spaces if s.source and s.module})
            raise PassError(
                self.name,
                f"ignore={unmatched[0]!r} matches no conv/linear/embedding layer; layers "
                f"are named like {', '.join(layers[:5])}",
            )
        groups = build_groups(cg)
        scores, fallbacks = compute_importance(
            gm, groups, self.importance, self.aggregate, example_inputs=ctx.example_inputs
        )
        cost = CostModel(gm, groups)
        removals = self._select(groups, scores, cost)
        plan = PruningPlan.for_groups(
            groups, removals, ignore=self.ignore, source=gm.meta.get("graphopt_source_class", "")
        )
        apply_removals(gm, groups, plan.removals)
        stats = _stats(groups, plan, cost, fallbacks)
        stats["params_after"] = count_parameters(gm)
        return PassResult(gm, bool(plan.removals), stats)

    def _select(self, groups: Sequence[PruningGroup], scores: dict, cost: CostModel) -> dict:
        """The units to remove; ``cost`` is left predicting the MACs after removing them."""
        opts = {"round_to": self.round_to, "min_channels": self.min_channels}
        if self.ratio is not None:
            removals = select_by_ratio(groups, scores, self.ratio, **opts)
            for gid, units in removals.items():
                cost.remove(gid, units)
            return removals
        removals, reached = select_for_macs(groups, scores, cost, self.target_macs, **opts)
        if not reached:
            frozen = [g for g in groups if g.frozen]
            example = f" (e.g. {frozen[0].id}: {frozen[0].frozen_reasons[0]})" if frozen else ""
            raise PassError(
                self.name,
                f"target_macs={self.target_macs} cannot be reached: pruning every group as far "
                f"as round_to={self.round_to} and min_channels={self.min_channels} allow keeps "
                f"{cost.total / max(cost.original, 1):.1%} of the MACs; {len(frozen)} of "
                f"{len(groups)} groups are frozen{example}. Raise target_macs, lower "
                "round_to/min_channels, or ignore fewer layers",
            )
        return removals


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stats(groups, plan: PruningPlan, cost: CostModel, fallbacks: list[str]) -> dict:
    by_id = {g.id: g for g in groups}
    channels = sum(by_id[gid].widths[u] for gid, units in plan.removals.items() for u in units)
    return {
        "groups": len(groups),
        "pruned_groups": len(plan.removals),
        "units_removed": plan.units_removed,
        "channels_removed": channels,
        "macs_before": round(cost.original),
        "macs_after": round(cost.total),
        "params_before": cost.params,
        "frozen": [
            {"group": g.id, "reason": "; ".join(g.frozen_reasons)} for g in groups if g.frozen
        ],
        "partially_frozen": [
            {
                "group": g.id,
                "frozen_units": len(g.frozen_units),
                "reason": "; ".join(g.frozen_reasons),
            }
            for g in groups
            if g.frozen_units and not g.frozen
        ],
        "importance_fallbacks": fallbacks,
        "plan": plan.to_dict(),
    }
