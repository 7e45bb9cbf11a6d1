"""Unstructured weight sparsity: zero the least important weights of conv and linear layers.

Match → check → rewrite: every conv1d/2d/3d and linear whose weight is a float parameter of
its own (``graphopt.sparsity.layers``; others are refusals with the reason) gets a keep mask,
and its pruned weights are set to exactly zero in place.

- ``score``: ``magnitude`` (``|w|``) or ``taylor`` (``Σ_b (w · ∂L_b/∂w)²`` on ``score_batches``
  batches of ``ctx.train``, else ``ctx.calibration``; unlabelled batches use the teacher's top-1
  as label), maths in ``graphopt.sparsity.scores``.
- ``scope``: ``layer`` (every layer at the target) or ``global`` (one ranking over all layers);
  or ``pattern: "N:M"`` (the ``N`` best of every ``M`` consecutive weights along the input
  dimension, sparsity ``1 − N/M``; a layer whose input channels are not a multiple of ``M`` is
  refused). Maths in ``graphopt.sparsity.select``.
- ``steps`` > 1: the gradual schedule of tf-model-optimization's ``PolynomialDecay``,
  ``s_t = s_f + (s_i − s_f)(1 − t/n)³`` from ``initial_sparsity`` to ``sparsity``, scores
  recomputed on the current weights at every step. With ``recovery`` (distillation options of
  ``graphopt.recovery``), each step is followed by that much fine-tuning from ``ctx.teacher`` on
  ``ctx.train``, which is how the network re-routes around what the step removed; the best
  checkpoint of each round is kept, by ``ctx.validate`` when given.

Masks persist: each is stored on ``gm.meta`` (``graphopt.sparsity.masks``), where the recovery
between steps and any later ``recover`` pass read them and hold the pruned weights at exactly
zero after every optimizer step. Masks only shrink: a weight an earlier run pruned stays
pruned (zeros score ``-inf``), so a second run at the same sparsity changes nothing.

Stats: the sparsity reached over the eligible weights and per layer; the stored size of each
layer in a sparse encoding (dense, bitmask + values, CSR, the smallest kept;
``graphopt.sparsity.storage``) and of the model, with the ratio to the dense model; the schedule
with the recovery criterion before and after each round; refusals. The graph stays dense: the
ONNX file is as large as the dense model's and ONNX Runtime's and TVM's dense CPU kernels
multiply the zeros, so no speed-up is expected; the report's latency row measures it.
Approximate (``exact = False``): the pass manager measures the output change.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from itertools import islice
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor
from torch.fx import GraphModule

from graphopt.data import input_batches
from graphopt.errors import PassError
from graphopt.ir import get_tensor, set_tensor
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.recovery.batching import split_batch
from graphopt.recovery.config import DistillConfig
from graphopt.recovery.trainer import distill
from graphopt.sparsity import scores, select
from graphopt.sparsity.layers import WeightRef, check_names, find_weights
from graphopt.sparsity.masks import graph_masks, store_mask
from graphopt.sparsity.storage import model_bytes, sparse_bytes, tensor_bytes

__all__ = ["Sparsify"]

_PATTERN = re.compile(r"^(\d+):(\d+)$")
LATENCY_NOTE = (
    "the graph stays dense: ONNX Runtime's and TVM's CPU kernels multiply the zeros, so "
    "latency is the dense model's (the report's latency row measures it)"
)


@register_pass
class Sparsify(Pass):
    """Zero the least important weights (magnitude or Taylor; per layer, global or N:M)."""

    name = "sparsify"
    exact = False

    class Options(Options):
        sparsity: float | None = Field(
            None, ge=0, lt=1, description="target share of zero weights (or pattern)"
        )
        score: Literal["magnitude", "taylor"] = Field(
            "magnitude", description="magnitude |w| or taylor (w·∂L/∂w)²"
        )
        scope: Literal["layer", "global"] = Field(
            "layer", description="rank within each layer or over all layers"
        )
        pattern: str | None = Field(
            None, description="N:M, keep N of every M weights along the input dim ('2:4')"
        )
        steps: int = Field(1, ge=1, description="steps of the gradual (cubic) schedule")
        initial_sparsity: float = Field(0.0, ge=0, lt=1, description="schedule's start")
        recovery: DistillConfig | None = Field(
            None, description="distillation options for fine-tuning after each step"
        )
        score_batches: int = Field(4, ge=1, description="batches for taylor scores")
        skip: Names = Field((), description="module paths left dense")

        @field_validator("pattern")
        @classmethod
        def _n_of_m(cls, value: str | None) -> str | None:
            if value is None:
                return value
            match = _PATTERN.match(value)
            if not match or not 1 <= int(match[1]) < int(match[2]):
                raise ValueError(f"must be 'N:M' with 1 <= N < M, e.g. '2:4', got {value!r}")
            return value

        @model_validator(mode="after")
        def _one_target(self) -> Sparsify.Options:
            if (self.sparsity is None) == (self.pattern is None):
                raise ValueError("give one of sparsity (a share of zeros) or pattern ('N:M')")
            if self.pattern is not None and (self.steps > 1 or self.scope == "global"):
                raise ValueError("pattern fixes each group's sparsity: use steps 1, scope layer")
            if self.sparsity is not None and self.initial_sparsity > self.sparsity:
                raise ValueError(
                    f"initial_sparsity {self.initial_sparsity:g} exceeds sparsity "
                    f"{self.sparsity:g}: the schedule only prunes"
                )
            return self

    @property
    def writes_in_place(self) -> bool:  # type: ignore[override]
        """With ``recovery``, distillation trains every parameter in place: the pass manager
        then hands the pass a private copy (``graphopt.sharing``)."""
        return self.recovery is not None

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.recovery is not None:
            ctx.require(self.name, "teacher", "train", purpose="recovery between steps")
        if self.score == "taylor" and ctx.train is None and ctx.calibration is None:
            raise PassError(
                self.name,
                "score 'taylor' needs gradients on data: give ctx.train (labelled, or with "
                "ctx.teacher for pseudo-labels) or ctx.calibration with ctx.teacher",
            )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        check_names(gm, self.name, "skip", self.skip)
        refs, refused = find_weights(gm, self.skip)
        refs = self._fit_pattern(gm, refs, refused)
        weights = {r.target: get_tensor(gm, _weight_node(gm, r)) for r in refs}
        was_zero = sum(int((w == 0).sum()) for w in weights.values())
        batches = self._taylor_batches(ctx) if self.score == "taylor" and refs else []
        schedule, improved = [], False
        for step, target in enumerate(self._targets(), start=1):
            if not refs:
                break
            reached = self._prune(gm, refs, weights, target, batches, ctx.teacher)
            row: dict[str, Any] = {"step": step, "target": target, "sparsity": reached}
            if self.recovery is not None:
                gm, history = self._recover(gm, ctx)
                weights = {r.target: get_tensor(gm, _weight_node(gm, r)) for r in refs}
                improved |= history.improved
                row |= {
                    "criterion": history.criterion,
                    "before": history.baseline,
                    "after": history.best,
                    "steps": history.steps,
                }
            schedule.append(row)
        zero = sum(int((w == 0).sum()) for w in weights.values())
        stats = self._stats(gm, refs, weights, schedule, refused)
        return PassResult(gm, modified=zero > was_zero or improved, stats=stats)

    # ---- match and check -----------------------------------------------------------------
    def _fit_pattern(
        self, gm: GraphModule, refs: list[WeightRef], refused: list[Refusal]
    ) -> list[WeightRef]:
        if self.pattern is None:
            return refs
        m = int(self.pattern.split(":")[1])
        kept = []
        for ref in refs:
            shape = get_tensor(gm, _weight_node(gm, ref)).shape
            if len(shape) < 2 or shape[1] % m:
                width = shape[1] if len(shape) >= 2 else 1
                refused.append(
                    Refusal(ref.where, f"{width} inputs per group is not a multiple of M={m}")
                )
            else:
                kept.append(ref)
        return kept

    def _targets(self) -> list[float]:
        if self.pattern is not None:
            n, m = (int(x) for x in self.pattern.split(":"))
            return [1 - n / m]
        if self.steps == 1:
            return [self.sparsity]
        return select.polynomial(self.initial_sparsity, self.sparsity, self.steps)

    def _taylor_batches(self, ctx: PassContext) -> list[scores.Batch]:
        try:
            if ctx.train is not None:
                found = [split_batch(b) for b in islice(ctx.train, self.score_batches)]
            else:
                data = input_batches(ctx.calibration, ctx.example_inputs)
                found = [(b, None) for b in islice(data, self.score_batches)]
        except TypeError as exc:
            raise PassError(self.name, f"bad data for taylor scores: {exc}") from exc
        if not found:
            raise PassError(self.name, "the data for taylor scores yielded no batches")
        if ctx.teacher is None and any(labels is None for _, labels in found):
            raise PassError(
                self.name,
                "score 'taylor' on unlabelled batches needs ctx.teacher, whose top-1 "
                "predictions become the labels: give ctx.teacher or labelled ctx.train",
            )
        return found

    # ---- rewrite -------------------------------------------------------------------------
    def _prune(
        self,
        gm: GraphModule,
        refs: list[WeightRef],
        weights: dict[str, Tensor],
        target: float,
        batches: list[scores.Batch],
        teacher: torch.nn.Module | None,
    ) -> float:
        """Zero the weights the step's masks prune; return the sparsity reached."""
        if self.score == "taylor":
            try:
                raw = scores.taylor(gm, refs, batches, teacher)
            except ValueError as exc:
                raise PassError(self.name, f"taylor scores: {exc}") from exc
        else:
            raw = scores.magnitude(gm, refs)
        ranked = {t: select.pruned_first(s, weights[t]) for t, s in raw.items()}
        if self.pattern is not None:
            n, m = (int(x) for x in self.pattern.split(":"))
            masks = {t: select.n_of_m(s, n, m) for t, s in ranked.items()}
        elif self.scope == "global":
            masks = select.global_(ranked, target)
        else:
            masks = select.per_layer(ranked, target)
        stored = graph_masks(gm)
        with torch.no_grad():
            for t, keep in masks.items():
                if t in stored and stored[t].shape == keep.shape:
                    keep = keep & stored[t]  # masks only shrink
                # a new tensor, not masked_fill_: unchanged tensors are shared with the
                # original graph (graphopt.sharing)
                is_parameter = isinstance(weights[t], torch.nn.Parameter)
                weights[t] = weights[t].masked_fill(~keep, 0.0)
                set_tensor(gm, t, weights[t], parameter=is_parameter, copy=False)
                store_mask(gm, t, keep)
        total = sum(w.numel() for w in weights.values())
        return sum(int((w == 0).sum()) for w in weights.values()) / max(total, 1)

    def _recover(self, gm: GraphModule, ctx: PassContext) -> tuple[GraphModule, Any]:
        try:
            model, history = distill(
                gm, ctx.teacher, ctx.train, evaluate=ctx.scorer, **self.recovery.model_dump()
            )
        except (TypeError, ValueError) as exc:
            raise PassError(self.name, f"recovery: {exc}") from exc
        return model, history

    # ---- stats ---------------------------------------------------------------------------
    def _stats(
        self,
        gm: GraphModule,
        refs: list[WeightRef],
        weights: dict[str, Tensor],
        schedule: list[dict[str, Any]],
        refused: list[Refusal],
    ) -> dict[str, Any]:
        layers, encoded = [], {}
        for ref in refs:
            w = weights[ref.target]
            size = sparse_bytes(w)
            encoding, stored = size.best
            encoded[ref.target] = stored
            zeros = int((w == 0).sum())
            layers.append(
                {
                    "layer": ref.where,
                    "weight": ref.target,
                    "params": w.numel(),
                    "zeros": zeros,
                    "sparsity": zeros / max(w.numel(), 1),
                    "encoding": encoding,
                    "bytes_dense": size.dense,
                    "bytes_bitmask": size.bitmask,
                    "bytes_csr": size.csr,
                    "bytes_stored": stored,
                }
            )
        total = sum(row["params"] for row in layers)
        dense = sum(tensor_bytes(gm).values())
        stored = model_bytes(gm, encoded)
        return {
            "score": self.score,
            "scope": "n_of_m" if self.pattern else self.scope,
            "pattern": self.pattern,
            "target": self._targets()[-1],
            "sparsity": sum(row["zeros"] for row in layers) / max(total, 1),
            "layers_sparsified": len(layers),
            "weights": total,
            "bytes_dense": dense,
            "bytes_stored": stored,
            "size_ratio": dense / max(stored, 1),
            "latency": LATENCY_NOTE,
            "layers": layers,
            "schedule": schedule,
            "refused": [asdict(r) for r in refused],
        }


def _weight_node(gm: GraphModule, ref: WeightRef) -> torch.fx.Node:
    return next(n for n in gm.graph.nodes if n.name == ref.node).args[1]
