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

With ``target_macs``, ``selection`` says how the global search ranks removals (see
``graphopt.pruning.policy``): ``importance`` (the default) by normalised importance alone,
``cost_aware`` by normalised importance lost per MAC saved. The default is ``importance``
because that is what measured faster on ONNX Runtime (``benchmarks/RESULTS.md``, ResNet-50
and MobileNetV2 at 50 % of the MACs): per MAC, the cheapest channels are those of the
layers that many convs share — the residual streams, MobileNetV2's bottlenecks, a stem at
full resolution — and with importances that differ little between groups ``cost_aware``
cuts those to ``round_to`` channels first; that meets the MACs target but leaves the wide,
memory-bound layers (depthwise convs on the expansions) as they were, so the model is
slower at equal MACs. ``cost_aware`` is for when MACs themselves are the budget.
``latency_aware`` keeps the MACs target but ranks by importance lost per second saved on the
backend's per-layer latency tables (below): at equal MACs, the channels that cost time.
``latency_precision: int8`` measures those tables on int8 QDQ layers (QLinearConv on ORT),
for a model that ``quantize`` makes int8 next.

With ``target_latency`` the same search runs on a latency cost model instead of MACs
(``graphopt.pruning.latency``): every conv's and linear's latency alone, at a grid of kept
input × output channel counts, is measured once per machine on the recipe's first backend
(``ctx.layer_latency``; ONNX Runtime builds one-node models, ``graphopt.backends.
layer_latency``, and caches the table) and interpolated, and pruning stops when the
predicted latency of those layers is at most ``target_latency`` × the original's. No
candidate model is exported or timed: ``adapt`` stays for measured verification.
``stats`` then also holds ``latency_before_ms``/``latency_after_ms`` (predicted, the layers
only) and ``layers_measured``; ``macs_after`` stays MACs.

``round_to: auto`` asks the same backend which channel multiple its conv kernels run fast
(``graphopt.pruning.multiples``: a probe conv timed at every count from 17 to 96, cached with
the tables): 16 with ORT on AVX-512, 8 on AVX2, 1 where no block is measurably faster.
``stats["round_to"]`` gives the multiple used and the gain of each candidate block.

What it decided is a ``PruningPlan`` (``stats["plan"]``): data that prints, saves to JSON and
replays on a fresh trace with ``graphopt.pruning.apply_plan``. Pruning changes the outputs, so
the pass is approximate (``exact = False``): the pass manager measures the error. Removing
channels whose weights are all zero changes nothing (up to float rounding).

Stats: groups found, pruned, units and channels removed, MACs and parameters before and after,
fully and partially frozen groups with their reasons, the plan, and the groups for which
``bn_scale`` had no BatchNorm and fell back to l2. ``macs_after`` is the policy's cost model's
prediction, which equals ``analyze`` on the pruned graph (tested); the pass leaves
recompiling and shape propagation to the pass manager, like every pass.

Post-training pruning, without fine-tuning (calibration inputs only, no labels; needs
``ctx.calibration``, of which the first ``calibration_samples`` are used):
``importance: reconstruction`` chooses the channels whose removal least changes the output
of the layers that read them (ThiNet's greedy: ``graphopt.pruning.reconstruction``);
``refit: true`` re-fits those layers' weights and biases by damped least squares so that
their outputs match the unpruned model's (He et al. 2017), in graph order on the pruned
model's own activations; ``recalibrate_bn: true`` re-estimates the running statistics of the
BatchNorms after a changed layer (``graphopt.pruning.refit``). Both work with any
importance; ``stats["refit"]`` lists each re-fitted layer's relative calibration error with
its sliced and its re-fitted weights, and layers that could not be re-fitted are refusals.

Iterative pruning (``steps = k > 1``) prunes in ``k`` steps on a polynomial schedule (Zhu &
Gupta 2017): after step ``i`` the share ``sᵢ = 1 − (1 − i/k)^p`` of the final pruning is done
(``p = schedule_power``; 1 is linear, Zhu & Gupta use 3: large steps first, small ones at the
end). With ``ratio = r`` step ``i`` brings each group to ``floor(r · sᵢ · n₀)`` removed units
of its original ``n₀``; with ``target_macs = t`` it keeps ``1 − (1 − t) · sᵢ`` of the original
MACs. The last step hits the one-shot target; with ``ratio``, the one-shot unit counts (the
counts ``round_to`` allows depend only on how many units go when a group's units are equally
wide, as they are but for odd concats). Every step rebuilds the groups and recomputes the
importance on the graph that the previous steps, and the callback (which may fine-tune it),
left, so scores follow the weights. Between steps the pass recompiles and re-propagates
shapes itself, because the next step's analysis reads them; after the last step too when
``callback`` is given, so the callback gets a graph that runs. The plan is expressed in the
original model's unit numbering (a unit keeps its rank among the survivors of its group, so
step-local indices map back), hence it replays in one shot on a fresh trace.
``stats["schedule"]`` lists each step's target, units removed, MACs and parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from torch.fx import GraphModule

from graphopt.data import input_batches
from graphopt.errors import PassError
from graphopt.ir import count_parameters, paused_gc, settle
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.groups import PruningGroup, build_groups
from graphopt.pruning.importance import AGGREGATES, METHODS, compute_importance
from graphopt.pruning.latency import LatencyCostModel
from graphopt.pruning.multiples import fast_multiple
from graphopt.pruning.plan import PruningPlan
from graphopt.pruning.policy import (
    LATENCY_AWARE,
    SELECTIONS,
    CostModel,
    schedule,
    select_by_count,
    select_for_macs,
)
from graphopt.pruning.reconstruction import RECONSTRUCTION, reconstruction_scores
from graphopt.pruning.refit import RefitReport, refit_pruned
from graphopt.pruning.surgery import apply_removals
from graphopt.pruning.units import UnitBook
from graphopt.quant.calibrate import take_samples
from graphopt.sharing import shared_copy

__all__ = ["PruneChannels", "StepCallback"]

StepCallback = Callable[[GraphModule, int], None]


@register_pass
class PruneChannels(Pass):
    """Remove the least important channels, heads and groups (parameters really sliced)."""

    name = "prune"
    exact = False

    class Options(Options):
        importance: Literal[(*METHODS, RECONSTRUCTION)] = Field(
            "l2", description="channel score (reconstruction: output error on calibration data)"
        )
        ratio: float | None = Field(
            None, ge=0, lt=1, description="fraction of each group's channels to remove"
        )
        target_macs: float | None = Field(
            None, gt=0, le=1, description="fraction of the MACs to keep (global ranking)"
        )
        target_latency: float | None = Field(
            None,
            gt=0,
            le=1,
            description="fraction of the layers' latency to keep (tables measured on the "
            "first backend)",
        )
        round_to: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
            1,
            description="keep channel counts a multiple of this; auto: the multiple the first "
            "backend measures as fast",
        )
        min_channels: int = Field(1, ge=1, description="never leave a group below this")
        ignore: Names = Field((), description="module paths whose channels stay")
        aggregate: Literal[tuple(AGGREGATES)] = Field(
            "mean", description="how a group's members' scores combine"
        )
        steps: int = Field(1, ge=1, description="1: one-shot; k > 1: k iterative steps")
        schedule_power: float = Field(
            1.0, gt=0, description="iterative schedule (1 linear, 3 Zhu & Gupta's cubic)"
        )
        callback: SkipJsonSchema[StepCallback | None] = Field(  # Python only, not recipes
            None, description="(graph_module, step) -> None between steps (e.g. fine-tuning)"
        )
        selection: Literal[tuple(SELECTIONS)] = Field(
            "importance", description="how target_macs ranks removals"
        )
        latency_precision: Literal["fp32", "int8"] = Field(
            "fp32",
            description="layer tables as fp32 or int8 QDQ layers (int8: for a model quantized "
            "next)",
        )
        refit: bool = Field(
            False, description="least-squares re-fit of the layers reading pruned channels"
        )
        recalibrate_bn: bool = Field(
            False, description="re-estimate BatchNorm statistics after changed layers"
        )
        damping: float = Field(
            0.01, ge=0, description="refit's ridge damping, a fraction of mean diag(XᵀX)"
        )
        calibration_samples: int = Field(
            256, ge=1, description="calibration inputs for reconstruction/refit (held at once)"
        )

        @model_validator(mode="after")
        def _one_target(self) -> PruneChannels.Options:
            targets = (self.ratio, self.target_macs, self.target_latency)
            if sum(t is not None for t in targets) != 1:
                raise ValueError(
                    "give exactly one of ratio (fraction of each group's channels to remove), "
                    "target_macs (fraction of MACs to keep) and target_latency (fraction of "
                    f"latency to keep); got ratio={self.ratio!r}, target_macs="
                    f"{self.target_macs!r}, target_latency={self.target_latency!r}"
                )
            if self.selection == LATENCY_AWARE and self.target_macs is None:
                raise ValueError(
                    "selection latency_aware ranks by latency and stops at target_macs: give "
                    "target_macs (with target_latency, latency is already the cost)"
                )
            return self

    @property
    def data_aware(self) -> bool:
        """Whether the pass reads calibration data."""
        return self.importance == RECONSTRUCTION or self.refit or self.recalibrate_bn

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.target_latency is not None:
            ctx.require(self.name, "layer_latency", purpose="target_latency")
        if self.selection == LATENCY_AWARE:
            ctx.require(self.name, "layer_latency", purpose="selection: latency_aware")
        if self.round_to == "auto":
            ctx.require(self.name, "layer_latency", purpose="round_to: auto")
        if self.data_aware:
            used = [
                f"{k}={v!r}"
                for k, v in (
                    ("importance", self.importance),
                    ("refit", self.refit),
                    ("recalibrate_bn", self.recalibrate_bn),
                )
                if v in (RECONSTRUCTION, True)
            ]
            ctx.require(self.name, "calibration", purpose=", ".join(used))

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        state: _State | None = None
        batches = self._batches(gm, ctx) if self.data_aware else []
        measured = fast_multiple(ctx.layer_latency) if self.round_to == "auto" else None
        round_to = measured.multiple if measured is not None else int(self.round_to)
        for step in range(1, self.steps + 1):
            with paused_gc():  # ~10⁵ small tuples and lists: see ``paused_gc``
                state, cost, removals, target = self._step(gm, ctx, state, step, batches, round_to)
            params = count_parameters(gm)
            state.history.append(
                {
                    "step": step,
                    "target": round(target, 6),
                    "units_removed": sum(len(u) for u in removals.values()),
                    "macs": round(_macs_of(cost)),
                    "params": params,
                }
            )
            if step < self.steps or self.callback is not None:
                self._settle(gm, ctx, step)
            if self.callback is not None:  # fine-tuning may run here: the collector is on
                self.callback(gm, step)
        plan = state.book.plan(ignore=self.ignore, source=gm.meta.get("graphopt_source_class", ""))
        stats = _stats(plan, state, cost, params)
        stats["round_to"] = (
            {"auto": True, **measured.to_dict()} if measured is not None else round_to
        )
        if self.data_aware:
            stats |= {
                "calibration_samples": sum(b[0].shape[0] for b in batches),
                "refit": state.refit_rows,
                "bn_recalibrated": state.batchnorms,
            }
        refusals = tuple(Refusal(node, reason) for node, reason in state.refusals)
        return PassResult(gm, bool(plan.removals), stats, refusals=refusals)

    def _step(
        self,
        gm: GraphModule,
        ctx: PassContext,
        state: _State | None,
        step: int,
        batches: Sequence[tuple],
        round_to: int,
    ):
        """One pruning step: groups, scores, selection, surgery (then re-fit and BatchNorm
        re-estimation when asked); the state is updated."""
        groups = build_groups(self._channel_graph(gm, first=state is None))
        if self.importance == RECONSTRUCTION:
            scores, fallbacks = reconstruction_scores(
                gm, groups, batches, refit=self.refit, aggregate=self.aggregate
            )
        else:
            scores, fallbacks = compute_importance(
                gm, groups, self.importance, self.aggregate, example_inputs=ctx.example_inputs
            )
        cost = (
            LatencyCostModel(
                gm,
                groups,
                ctx.layer_latency,
                precision=self.latency_precision,
                batch=_example_batch(ctx.example_inputs),
            )
            if self.target_latency is not None or self.selection == LATENCY_AWARE
            else CostModel(gm, groups)
        )
        if state is None:
            state = _State.start(groups, cost)
        state.check_groups(self.name, groups, step)
        share = schedule(step, self.steps, self.schedule_power)
        removals, target = self._select(groups, scores, cost, state, share, step, round_to)
        # the graph before the surgery; surgery sets new tensors, so it may share them
        teacher = shared_copy(gm) if self.refit and removals else None
        apply_removals(gm, groups, removals)
        state.record(removals, fallbacks)
        if removals and (self.refit or self.recalibrate_bn):
            report = refit_pruned(
                gm,
                teacher,
                groups,
                removals,
                batches,
                damping=self.damping,
                recalibrate_bn=self.recalibrate_bn,
            )
            state.record_refit(report, step if self.steps > 1 else None)
        return state, cost, removals, target

    def _batches(self, gm: GraphModule, ctx: PassContext) -> list[tuple]:
        """The first ``calibration_samples`` calibration inputs, checked against the graph."""
        try:
            batches = list(
                take_samples(
                    input_batches(ctx.calibration, ctx.example_inputs, graph=gm),
                    self.calibration_samples,
                )
            )
        except TypeError as exc:
            raise PassError(self.name, f"bad calibration data: {exc}") from exc
        if not batches:
            raise PassError(self.name, "the calibration data yielded no batches")
        return batches

    def _channel_graph(self, gm: GraphModule, *, first: bool):
        cg = build_channel_graph(gm, ignore=self.ignore)
        unmatched = [p for p in self.ignore if p not in cg.ignored_matches]
        if first and unmatched:
            layers = sorted({s.module for s in cg.spaces if s.source and s.module})
            raise PassError(
                self.name,
                f"ignore={unmatched[0]!r} matches no conv/linear/embedding layer; layers "
                f"are named like {', '.join(layers[:5])}",
            )
        return cg

    def _select(
        self,
        groups: Sequence[PruningGroup],
        scores: dict,
        cost: CostModel,
        state: _State,
        share: float,
        step: int,
        round_to: int,
    ) -> tuple[dict, float]:
        """This step's removals and target; ``cost`` is left predicting the MACs after them.

        The target is cumulative (against the original model): the fraction of each group's
        units removed so far (ratio), or the fraction of the original MACs kept (target_macs).
        """
        opts = {"round_to": round_to, "min_channels": self.min_channels}
        if self.ratio is not None:
            ratio = self.ratio * share
            book = state.book
            counts = {
                g.id: max(0, math.floor(ratio * book.original_units(g.id) + 1e-9) - book.gone(g.id))
                for g in groups
            }
            removals = select_by_count(groups, scores, counts, **opts)
            for gid, units in removals.items():
                cost.remove(gid, units)
            return removals, ratio
        goal = self.target_macs if self.target_macs is not None else self.target_latency
        kept = 1.0 - (1.0 - goal) * share
        if self.selection == LATENCY_AWARE:  # a latency cost model, a MACs target
            relative = min(1.0, kept * state.macs / max(cost.original_macs, 1e-12))
        else:
            relative = min(1.0, kept * state.cost_original / max(cost.original, 1e-12))
        removals, reached = select_for_macs(
            groups,
            scores,
            cost,
            relative,
            selection=self.selection,
            **opts,
        )
        if not reached:
            frozen = [g for g in groups if g.frozen]
            example = f" (e.g. {frozen[0].id}: {frozen[0].frozen_reasons[0]})" if frozen else ""
            at_step = f" (step {step} of {self.steps} aims at {kept:.3g})" if self.steps > 1 else ""
            what = "target_macs" if self.target_macs is not None else "target_latency"
            unit = "MACs" if self.target_macs is not None else "predicted latency"
            left = (
                _macs_of(cost) / max(state.macs, 1e-30)
                if self.target_macs is not None
                else cost.total / max(state.cost_original, 1e-30)
            )
            raise PassError(
                self.name,
                f"{what}={goal} cannot be reached{at_step}: pruning every "
                f"group as far as round_to={round_to} and min_channels="
                f"{self.min_channels} allow keeps "
                f"{left:.1%} of the "
                f"{unit}; {len(frozen)} of {len(groups)} groups are frozen{example}. Raise "
                f"{what}, lower round_to/min_channels, or ignore fewer layers",
            )
        return removals, kept

    def _settle(self, gm: GraphModule, ctx: PassContext, step: int) -> None:
        """Recompile and re-propagate shapes: the next step and the callback need them."""
        settle(gm, ctx.example_inputs, who=f"{self.name} (step {step} of {self.steps})")


@dataclass
class _State:
    """What iterative pruning carries between steps; ``book`` maps each step's unit numbers
    back to the original model's (``graphopt.pruning.units``), so the plan replays in one shot.
    """

    book: UnitBook
    macs: float
    params: int
    cost_original: float  # in the cost model's unit: MACs, or seconds with target_latency
    fallbacks: list[str]
    history: list[dict]
    refit_rows: list[dict] = field(default_factory=list)
    refusals: list[tuple[str, str]] = field(default_factory=list)
    batchnorms: int = 0

    @classmethod
    def start(cls, groups: Sequence[PruningGroup], cost: CostModel) -> _State:
        return cls(
            book=UnitBook.start(groups),
            macs=cost.original_macs if isinstance(cost, LatencyCostModel) else cost.original,
            params=cost.params,
            cost_original=cost.original,
            fallbacks=[],
            history=[],
        )

    @property
    def groups(self) -> tuple[PruningGroup, ...]:
        """The groups of the unpruned graph (the plan's numbering)."""
        return self.book.groups

    def check_groups(self, name: str, groups: Sequence[PruningGroup], step: int) -> None:
        """The groups of a pruned graph must be the original ones, with fewer units."""
        mismatch = self.book.mismatch(groups)
        if mismatch is not None:
            raise PassError(
                name,
                f"step {step}: {mismatch}; the graph changed between steps other than by "
                "pruning (a callback may fine-tune weights, but not change layers)",
            )

    def record(self, removals: dict, fallbacks: list[str]) -> None:
        self.book.record(removals)
        self.fallbacks.extend(f for f in fallbacks if f not in self.fallbacks)

    def record_refit(self, report: RefitReport, step: int | None) -> None:
        """Re-fitted layers (with the step when iterative), refusals once, BatchNorms."""
        rows = report.rows if step is None else [{"step": step, **row} for row in report.rows]
        self.refit_rows.extend(rows)
        self.refusals.extend(r for r in report.refusals if r not in self.refusals)
        self.batchnorms += report.batchnorms


def _macs_of(cost: CostModel) -> float:
    """The MACs ``cost`` predicts after its removals, whatever its unit."""
    return cost.predicted_macs() if isinstance(cost, LatencyCostModel) else cost.total


def _latency_stats(state: _State, cost: CostModel) -> dict:
    """With target_latency: the layers' predicted latency before and after, in ms."""
    if not isinstance(cost, LatencyCostModel):
        return {}
    return {
        "cost": "latency",
        "latency_before_ms": round(state.cost_original * 1e3, 4),
        "latency_after_ms": round(cost.total * 1e3, 4),
        "layers_measured": cost.measured,
    }


def _stats(plan: PruningPlan, state: _State, cost: CostModel, params: int) -> dict:
    groups = state.groups
    return _latency_stats(state, cost) | {
        "groups": len(groups),
        "pruned_groups": len(plan.removals),
        "units_removed": plan.units_removed,
        "channels_removed": state.book.channels_removed(),
        "macs_before": round(state.macs),
        "macs_after": round(_macs_of(cost)),
        "params_before": state.params,
        "params_after": params,
        "steps": len(state.history),
        "frozen": state.book.frozen(),
        "partially_frozen": [
            {
                "group": g.id,
                "frozen_units": len(g.frozen_units),
                "reason": "; ".join(g.frozen_reasons),
            }
            for g in groups
            if g.frozen_units and not g.frozen
        ],
        "importance_fallbacks": state.fallbacks,
        "schedule": state.history,
        "plan": plan.to_dict(),
    }


def _example_batch(inputs: Sequence[object]) -> int | None:
    """The batch of the user's example inputs (the first tensor's first size), at which the
    latency tables time the layers; None when there is no tensor with a dimension."""
    for value in inputs:
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return None
