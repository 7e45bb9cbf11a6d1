"""Remove whole residual blocks: ``y = s + f(x)`` → ``y = s`` for the least important ``f``.

Why: channel pruning thins every layer, and thin layers waste a CPU's vector units (ORT's
NCHWc kernels want channel counts in multiples of 16); dropping a block deletes its layers
outright, which every backend turns into latency without a special kernel. ResNets'
basic/bottleneck blocks, MobileNetV2's inverted residuals and each transformer layer's
attention and feed-forward sublayers are such branches (``graphopt.residual`` finds them
structurally, in the ATen graph, for any model).

Importance (``criterion``): ``output`` removes each candidate in turn from a weight-sharing
copy and measures the relative squared error of the model's outputs against the pass's input
graph over calibration batches (``ctx.calibration``, else the example inputs); ``metric``
measures the drop of the held-out metric (``ctx.validate``, else ``ctx.evaluate``). The least
important goes first, and with ``rescore`` the rest are scored again on the graph without it
(what one removal does depends on the others: two adjacent blocks may each be redundant but
not both). Removal stops at the target: ``target_macs`` (fraction of the MACs to keep),
``blocks`` (how many to remove) or ``target_latency`` (fraction of the latency on the first
backend, through ``ctx.latency``). Recovery (``recover`` after it) fine-tunes what is left.

Exact only when nothing is removed (``blocks: 0`` or a target already met); approximate
otherwise, and the pass manager measures how far the outputs moved. Stats: the ``blocks``
table (every candidate: MACs, share, first score, removal order), MACs before/after, and why
removal stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch.fx import GraphModule

from graphopt.analysis import analyze
from graphopt.data import input_batches
from graphopt.errors import PassError
from graphopt.fidelity import flat_outputs
from graphopt.metrics import evaluate_metric
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, register_pass
from graphopt.residual import Branch, find_branches, without_branch

__all__ = ["RemoveBlocks"]


@register_pass
class RemoveBlocks(Pass):
    """Replace the least important residual branches by the identity, to a MACs/latency target."""

    name = "remove_blocks"
    exact = False

    class Options(Options):
        target_macs: float | None = Field(
            None, gt=0, le=1, description="fraction of the MACs to keep"
        )
        blocks: int | None = Field(None, ge=0, description="how many branches to remove")
        target_latency: float | None = Field(
            None, gt=0, le=1, description="fraction of the latency to keep (ctx.latency)"
        )
        criterion: Literal["output", "metric"] = Field(
            "output", description="score by output error on calibration data, or metric drop"
        )
        metric: str | None = Field(None, description="which key of a dict metric to use")
        mode: Literal["max", "min"] = Field("max", description="is a higher metric better")
        skip: Names = Field((), description="branches (module paths) never removed")
        rescore: bool = Field(True, description="score the rest again after each removal")
        calibration_batches: int = Field(4, ge=1, description="batches used for the score")

        @model_validator(mode="after")
        def _one_target(self) -> RemoveBlocks.Options:
            given = [self.target_macs, self.blocks, self.target_latency]
            if sum(v is not None for v in given) != 1:
                raise ValueError(
                    "give exactly one of target_macs (fraction of MACs to keep), blocks "
                    "(how many to remove) and target_latency (fraction of latency to keep); "
                    f"got target_macs={self.target_macs!r}, blocks={self.blocks!r}, "
                    f"target_latency={self.target_latency!r}"
                )
            return self

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.target_latency is not None:
            ctx.require(self.name, "latency", purpose="target_latency")
        if self.criterion == "metric":
            ctx.require(
                self.name,
                "validate" if ctx.validate is not None else "evaluate",
                purpose="criterion 'metric'",
            )
        names = {b.name for b in find_branches(gm)}
        for entry in self.skip:
            if not any(n == entry or n.startswith(entry + ".") for n in names):
                known = ", ".join(sorted(names)[:6]) or "none: the graph has no residual branch"
                raise PassError(
                    self.name, f"skip entry {entry!r} matches no residual branch; they are {known}"
                )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        score = self._scorer(gm, ctx)
        macs_before = analyze(gm).macs
        latency_before = ctx.latency(gm, ctx.example_inputs) if self.target_latency else None
        first_scores: dict[str, float] = {}
        order: list[str] = []
        rows = {b.name: b for b in find_branches(gm)}
        stop = "target reached"
        if self._reached(gm, ctx, order, macs_before, latency_before):
            stop = "target already met: nothing removed"
        while not self._reached(gm, ctx, order, macs_before, latency_before):
            candidates = [b for b in find_branches(gm) if not self._skipped(b.name)]
            if not candidates:
                stop = "no removable branch left"
                break
            if self.rescore or not first_scores:
                scores = {
                    b.name: score(without_branch(gm, b, share_weights=True)) for b in candidates
                }
                for name, value in scores.items():
                    first_scores.setdefault(name, value)
            else:
                scores = {b.name: first_scores.get(b.name, float("inf")) for b in candidates}
            chosen = min(candidates, key=lambda b: (scores[b.name], -b.macs))
            self._say(ctx, f"removing {chosen.name} (score {scores[chosen.name]:.3g})")
            without_branch(gm, chosen)
            order.append(chosen.name)
        macs_after = analyze(gm).macs if order else macs_before
        table = [_row(b, macs_before, first_scores, order) for b in rows.values()]
        stats = {
            "candidates": len(rows),
            "removed": list(order),
            "macs_before": macs_before,
            "macs_after": macs_after,
            "criterion": self.criterion,
            "stopped": stop,
        }
        if latency_before is not None:
            stats["latency_before_s"] = latency_before
        return PassResult(gm, modified=bool(order), stats=stats, tables={"blocks": table})

    # ---- targets and scores -------------------------------------------------------------
    def _reached(
        self,
        gm: GraphModule,
        ctx: PassContext,
        order: Sequence[str],
        macs_before: int,
        latency_before: float | None,
    ) -> bool:
        if self.blocks is not None:
            return len(order) >= self.blocks
        if self.target_macs is not None:
            return analyze(gm).macs <= self.target_macs * macs_before
        assert latency_before is not None and ctx.latency is not None
        if not order:
            return self.target_latency >= 1
        return ctx.latency(gm, ctx.example_inputs) <= self.target_latency * latency_before

    def _scorer(self, gm: GraphModule, ctx: PassContext) -> Callable[[GraphModule], float]:
        """``score(trial) -> float``, lower is less important."""
        if self.criterion == "metric":
            scorer = ctx.scorer
            assert scorer is not None
            baseline = self._metric(scorer, gm)
            sign = 1.0 if self.mode == "max" else -1.0
            return lambda trial: sign * (baseline - self._metric(scorer, trial))
        batches = self._batches(gm, ctx)
        references = [flat_outputs(gm, batch) for batch in batches]

        def output_error(trial: GraphModule) -> float:
            errors = [
                _relative_squared_error(ref, flat_outputs(trial, batch))
                for ref, batch in zip(references, batches, strict=True)
            ]
            mean = sum(errors) / len(errors)
            return mean if mean == mean else float("inf")  # NaN: a removal that breaks it

        return output_error

    def _metric(self, scorer: Callable, module: GraphModule) -> float:
        values = evaluate_metric(scorer, module, stage=self.name)
        if self.metric is not None:
            if self.metric not in values:
                raise PassError(self.name, f"metric {self.metric!r} is not one of {sorted(values)}")
            return values[self.metric]
        if len(values) != 1:
            raise PassError(
                self.name,
                f"the metric gives {sorted(values)}; name the one to use with `metric:`",
            )
        return next(iter(values.values()))

    def _batches(self, gm: GraphModule, ctx: PassContext) -> list[tuple[torch.Tensor, ...]]:
        if ctx.calibration is None:
            return [tuple(ctx.example_inputs)]
        batches = []
        for batch in input_batches(ctx.calibration, graph=gm):
            batches.append(batch)
            if len(batches) >= self.calibration_batches:
                break
        if not batches:
            raise PassError(self.name, "calibration data yielded no batches; give at least one")
        return batches

    def _skipped(self, name: str) -> bool:
        return any(name == s or name.startswith(s + ".") for s in self.skip)

    @staticmethod
    def _say(ctx: PassContext, message: str) -> None:
        if ctx.progress is not None:
            ctx.progress(f"remove_blocks: {message}")


def _relative_squared_error(
    reference: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]
) -> float:
    """Σ‖a − r‖² / Σ‖r‖² over outputs: a mean effect, where ``relative_error``'s max is a
    worst case (one outlier logit would rank the blocks)."""
    num = sum(
        float((a.double() - r.double()).pow(2).sum())
        for r, a in zip(reference, actual, strict=True)
    )
    den = sum(float(r.double().pow(2).sum()) for r in reference)
    return num / den if den else num


def _row(
    branch: Branch, macs_before: int, scores: dict[str, float], order: Sequence[str]
) -> dict[str, object]:
    return {
        "block": branch.name,
        "macs": branch.macs,
        "macs_share": round(branch.macs / macs_before, 4) if macs_before else 0.0,
        "score": scores.get(branch.name),
        "removed": order.index(branch.name) + 1 if branch.name in order else None,
    }
