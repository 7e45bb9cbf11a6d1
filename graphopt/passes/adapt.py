"""Latency- or MACs-targeted channel pruning chosen by search (NetAdapt, Yang et al. 2018).

``adapt`` prunes until the model keeps at most ``target_latency`` of its latency (measured on
the deployment backend) or ``target_macs`` of its MACs, removing per iteration ``step`` of the
original resource from the one group whose candidate scores best; ``graphopt.search.netadapt``
has the algorithm. It reuses the pruning package throughout: groups and frozen channels,
importance (which channels of a group go first), valid counts (``round_to``,
``min_channels``), surgery, and the plan it returns (``stats["plan"]``, replayable with
``graphopt.pruning.apply_plan``).

What the pass reads from the context:

- ``ctx.latency``: ``(module, example_inputs) -> seconds`` (a median), required with
  ``target_latency``. The runner builds it from the recipe's backend; a pass never imports a
  backend. Measurements are cached per channel configuration (``graphopt.search.latency_cache``:
  NetAdapt's lookup table, at whole-model granularity).
- ``ctx.validate`` (else ``ctx.evaluate``): ``model -> float | {name: float}`` (higher is
  better; a mapping's first value), the candidates' score; without it, the cosine
  similarity of the candidate's outputs with the pass's input graph's on ``ctx.calibration``
  (its first 8 batches) or the example inputs.
- ``ctx.train`` (and optionally ``ctx.teacher``, default the pass's input graph): with
  ``short_finetune_steps > 0``, each candidate is fine-tuned before it is scored, as NetAdapt
  does, by ``graphopt.recovery.distill(student, teacher, train, steps=n)`` (``train`` yields
  ``(inputs, labels)``, labels may be None); without training batches there is no
  fine-tuning, and ``stats["finetune"]`` says why.

``round_to`` defaults to 16: ONNX Runtime's blocked (NCHWc) conv kernels need channel counts
that are multiples of the block, and a pruned count off the grid can make a layer slower.

An unreachable budget is not an error: the pass returns the closest model it found, with
``stats["budget_met"] = False`` and ``stats["message"]`` saying why.

``parallel: {backend: ray}`` (or ``auto``: Ray when installed) fine-tunes and scores each
iteration's candidates as Ray tasks, on the runtime ``graphopt sweep`` uses
(``graphopt.distributed``: a running one, else ``address`` / ``RAY_ADDRESS``, else a local one
of ``num_cpus``); ``graphopt.search.parallel`` has the details. The choice per iteration is
the sequential one, so with deterministic scoring (and fine-tuning) the plan is the same.
Latency is always measured in this process, never in a task: with ``target_latency`` on one
host, tasks timing models side by side would disturb each other by more than the few percent
that separate candidates, so an iteration's tasks start only after its latency probes. Ray
helps when scoring (or fine-tuning) dominates, e.g. a validation metric per candidate.
A missing Ray (``auto``), a model or callable that cannot be sent to a worker: the candidates
run in process, and the ``note`` of ``stats["parallel"]`` (a one-row table) says why; the row
also says how they ran (``mode``, ``address``, ``cpus``, ``tasks``), as ``sweep.json`` does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch.fx import GraphModule

from graphopt.checks import is_number
from graphopt.data import input_batches
from graphopt.errors import GraphoptError, PassError
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, register_pass
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.importance import METHODS
from graphopt.search.latency_cache import LatencyCache
from graphopt.search.netadapt import (
    CostFn,
    Finetune,
    ScoreFn,
    SearchOptions,
    SearchResult,
    output_fidelity,
    search,
)
from graphopt.search.parallel import candidate_tasks
from graphopt.search.portable import PortableGraph, pack, unpack

__all__ = ["Adapt"]

_FIDELITY_BATCHES = 8
BACKENDS = ("none", "ray", "auto")


class ParallelOptions(Options):
    """``parallel: {backend: auto, num_cpus: 2}``: where the candidates are scored."""

    backend: Literal[BACKENDS] = Field(
        "none", description="none (in process), ray, or auto (ray when installed)"
    )
    address: str | None = Field(None, min_length=1, description="Ray cluster (else local)")
    num_cpus: int | None = Field(None, ge=1, description="local Ray runtime CPUs (default all)")
    task_cpus: float = Field(1, gt=0, description="CPUs one candidate's task reserves")


@register_pass
class Adapt(Pass):
    """Prune to a latency or MACs budget, one searched step at a time (NetAdapt)."""

    name = "adapt"
    exact = False

    class Options(Options):
        target_latency: float | None = Field(
            None, gt=0, le=1, description="fraction of the original latency to keep (measured)"
        )
        target_macs: float | None = Field(
            None, gt=0, le=1, description="fraction of the MACs to keep"
        )
        step: float = Field(
            0.05, gt=0, lt=1, description="fraction of the original cost cut per iteration"
        )
        step_decay: float = Field(1.0, gt=0, le=1, description="step shrinks by this each time")
        importance: Literal[tuple(METHODS)] = Field("l2", description="channel score")
        round_to: int = Field(16, ge=1, description="keep channel counts a multiple of this")
        min_channels: int = Field(1, ge=1, description="never leave a group below this")
        ignore: Names = Field((), description="module paths whose channels stay")
        max_iterations: int = Field(50, ge=1, description="search iterations at most")
        short_finetune_steps: int = Field(
            0, ge=0, description="distillation steps per candidate (needs train data)"
        )
        parallel: ParallelOptions = Field(
            default_factory=lambda: ParallelOptions(), description="score candidates on Ray"
        )

        @model_validator(mode="after")
        def _one_target(self) -> Adapt.Options:
            if (self.target_latency is None) == (self.target_macs is None):
                raise ValueError(
                    "give exactly one of target_latency (fraction of the original latency to "
                    "keep) and target_macs (fraction of the MACs to keep); got target_latency="
                    f"{self.target_latency!r}, target_macs={self.target_macs!r}"
                )
            return self

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.target_latency is not None:
            ctx.require(self.name, "latency", purpose="target_latency (or use target_macs)")
        if ctx.scorer is not None:
            ctx.require(self.name, "validate" if ctx.validate is not None else "evaluate")
        cg = build_channel_graph(gm, ignore=self.ignore)
        unmatched = [p for p in self.ignore if p not in cg.ignored_matches]
        if unmatched:
            layers = sorted({s.module for s in cg.spaces if s.source and s.module})
            raise PassError(
                self.name,
                f"ignore={unmatched[0]!r} matches no conv/linear/embedding layer; layers "
                f"are named like {', '.join(layers[:5])}",
            )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        kind = "latency" if self.target_latency is not None else "macs"
        inputs = tuple(ctx.example_inputs)
        cache = LatencyCache()
        options = SearchOptions(
            kind=kind,
            target=self.target_latency if kind == "latency" else self.target_macs,
            step=self.step,
            step_decay=self.step_decay,
            importance=self.importance,
            round_to=self.round_to,
            min_channels=self.min_channels,
            ignore=self.ignore,
            max_iterations=self.max_iterations,
        )
        score, metric_name = self._scorer(gm, ctx)
        finetune, finetune_note = self._finetune(gm, ctx)
        p = self.parallel
        try:
            with candidate_tasks(
                p.backend,
                gm,
                score,
                finetune,
                address=p.address,
                num_cpus=p.num_cpus,
                task_cpus=p.task_cpus,
                hold=kind == "latency",  # measure with no task running (module docstring)
            ) as (runner, how):
                result = search(
                    gm,
                    inputs,
                    self._cost(ctx, cache, kind),
                    score,
                    options,
                    finetune=finetune,
                    runner=runner,
                )
        except PassError:
            raise
        except GraphoptError as exc:
            raise PassError(self.name, str(exc)) from exc
        stats = _stats(result, kind, metric_name(), cache, finetune_note)
        stats["parallel"] = [how]  # a one-row table: the report renders every table
        return PassResult(result.graph_module, bool(result.plan.removals), stats)

    def _cost(self, ctx: PassContext, cache: LatencyCache, kind: str) -> CostFn:
        if kind == "macs":
            return lambda key, build, macs: macs
        latency = ctx.latency
        inputs = tuple(ctx.example_inputs)

        def measure(key, build: Callable[[], GraphModule], macs: float) -> float:
            try:
                return cache.get(key, lambda: latency(build(), inputs))
            except (TypeError, ValueError) as exc:
                raise PassError(self.name, f"ctx.latency returned badly: {exc}") from exc

        return measure

    def _scorer(self, gm: GraphModule, ctx: PassContext) -> tuple[ScoreFn, Callable[[], str]]:
        """The candidates' score and (once it has run) its name for the report."""
        evaluate = ctx.scorer
        if evaluate is None:
            calibration = ctx.calibration
            batches = (
                list(itertools.islice(input_batches(calibration, graph=gm), _FIDELITY_BATCHES))
                if calibration is not None
                else [tuple(ctx.example_inputs)]
            )
            return output_fidelity(gm, batches), lambda: "output cosine similarity"
        names: list[str] = []

        def score(model: GraphModule) -> float:
            raw = evaluate(model)
            if isinstance(raw, dict) and raw and not names:
                names.append(str(next(iter(raw))))
            value = _metric_value(raw)
            if value is None:
                raise PassError(
                    self.name,
                    "ctx.evaluate must return a number or a mapping whose first "
                    f"value is a number, got {raw!r}",
                )
            return value

        return score, lambda: names[0] if names else "evaluate"

    def _finetune(self, gm: GraphModule, ctx: PassContext) -> tuple[Finetune | None, str]:
        steps = self.short_finetune_steps
        if steps == 0:
            return None, "none (short_finetune_steps=0)"
        train = ctx.train
        if train is None:
            return None, "skipped: short_finetune_steps needs training batches in ctx.train"
        from graphopt.recovery import distill  # per call: tests may stand in a fake module

        teacher = ctx.teacher if ctx.teacher is not None else gm
        finetune = _ShortFinetune(distill, teacher, train, steps)
        return finetune, f"graphopt.recovery.distill, {steps} steps per candidate"


class _ShortFinetune:
    """``distill(student, teacher, train, steps)`` as a callable that pickles (a Ray task runs
    it): a GraphModule teacher, which does not pickle, travels as portable data."""

    def __init__(self, distill: Callable[..., Any], teacher: Any, train: Any, steps: int) -> None:
        self.distill, self.teacher, self.train, self.steps = distill, teacher, train, steps

    def __call__(self, student: GraphModule) -> GraphModule:
        model, _history = self.distill(
            student, self.teacher, self.train, steps=self.steps, progress=False
        )
        return model

    def __reduce__(self) -> tuple[Any, ...]:
        teacher = pack(self.teacher) if isinstance(self.teacher, GraphModule) else self.teacher
        return (_ShortFinetune._rebuild, (self.distill, teacher, self.train, self.steps))

    @staticmethod
    def _rebuild(distill: Callable[..., Any], teacher: Any, train: Any, steps: int) -> Any:
        teacher = unpack(teacher) if isinstance(teacher, PortableGraph) else teacher
        return _ShortFinetune(distill, teacher, train, steps)


def _metric_value(value: object) -> float | None:
    """A metric as a float: a number, or the first value of a mapping; None otherwise."""
    if isinstance(value, dict):
        value = next(iter(value.values()), None)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return float(value) if is_number(value) else None


def _stats(
    result: SearchResult, kind: str, metric: str, cache: LatencyCache, finetune: str
) -> dict[str, Any]:
    stats: dict[str, Any] = {
        "cost": kind,
        "budget_met": result.budget_met,
        "message": result.message,
        "iterations": len(result.trace),
        "macs_before": round(result.macs_before),
        "macs_after": round(result.macs_after),
        "macs_fraction": round(result.macs_after / max(result.macs_before, 1e-12), 6),
        "metric": metric,
        "metric_before": result.metric_before,
        "metric_after": result.metric_after,
        "channels": result.channels,
        "trace": result.trace,
        "candidates": result.candidates,
        "chosen": result.chosen,
        "frozen": result.frozen,
        "finetune": finetune,
        "plan": result.plan.to_dict(),
    }
    if kind == "latency":
        stats.update(
            latency_before_s=result.cost_before,
            latency_after_s=result.cost_after,
            latency_fraction=round(result.cost_after / result.cost_before, 6),
            latency_measurements=cache.measurements,
            latency_cache_hits=cache.hits,
        )
    return stats
