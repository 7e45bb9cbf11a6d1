"""Run passes in order and verify every stage.

After each pass the manager lints the graph (``Graph.lint``), recompiles, re-propagates shapes
and compares outputs with the previous stage on the example inputs. Exact passes must keep the
max relative error ``max|y − y_prev| / max|y_prev|`` within ``exact_tolerance`` (1e-5) or the run
fails naming the pass; approximate passes have the error measured and reported. The relative
error is normalised by the output's scale, not elementwise, so outputs near zero don't inflate it.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule

from graphopt.analysis import analyze
from graphopt.capture import as_input_tuple
from graphopt.errors import NumericsError, PassError
from graphopt.ir import propagate_shapes
from graphopt.metrics import EvalFn, evaluate_metric
from graphopt.passes.base import Pass, PassContext

__all__ = ["PassManager", "PipelineResult", "StageReport", "relative_error"]


@dataclass(frozen=True)
class StageReport:
    """One pipeline stage: what the pass did and what the graph costs after it."""

    name: str
    exact: bool
    modified: bool
    seconds: float
    params: int
    macs: int
    size_bytes: int
    peak_activation_bytes: int
    relative_error: float
    stats: dict[str, Any] = field(default_factory=dict)
    task_metric: dict[str, float] | None = None  # the user's metric after this stage


@dataclass(frozen=True)
class PipelineResult:
    graph_module: GraphModule
    stages: tuple[StageReport, ...]


class PassManager:
    """Runs ``passes`` in order on a copy of the input graph, checking each stage."""

    def __init__(
        self,
        passes: Sequence[Pass],
        *,
        exact_tolerance: float = 1e-5,
        check_numerics: bool = True,
    ) -> None:
        for p in passes:
            if not isinstance(p, Pass):
                raise TypeError(f"PassManager takes Pass instances, got {type(p).__name__}")
        if exact_tolerance <= 0:
            raise ValueError(f"exact_tolerance must be > 0, got {exact_tolerance}")
        self.passes = tuple(passes)
        self.exact_tolerance = exact_tolerance
        self.check_numerics = check_numerics

    def run(
        self,
        gm: GraphModule,
        example_inputs: torch.Tensor | Sequence[torch.Tensor],
        *,
        context: PassContext | None = None,
        evaluate: EvalFn | None = None,
    ) -> PipelineResult:
        """Run the pipeline. ``gm`` itself is never modified: the manager works on a copy.

        With ``evaluate`` (the user's task metric), every stage, the capture included, is
        evaluated and the value recorded in its ``StageReport.task_metric``.
        """
        inputs = as_input_tuple(example_inputs)
        ctx = context or PassContext(example_inputs=inputs)
        with warnings.catch_warnings():  # torch's pytree deprecation noise on deepcopy
            warnings.filterwarnings("ignore", category=FutureWarning)
            current = copy.deepcopy(gm)
        reference = _outputs(current, inputs)

        def metric(module: GraphModule) -> dict[str, float] | None:
            return None if evaluate is None else evaluate_metric(evaluate, module)

        stages = [_stage("capture", True, False, 0.0, current, 0.0, {}, metric(current))]
        for p in self.passes:
            start = time.perf_counter()
            result = p.run(current, ctx)
            current = result.graph_module
            self._housekeeping(p, current, inputs)
            seconds = time.perf_counter() - start
            outputs = _outputs(current, inputs)
            error = relative_error(reference, outputs) if self.check_numerics else float("nan")
            if p.exact and self.check_numerics and not error <= self.exact_tolerance:
                raise NumericsError(
                    p.name,
                    f"declared exact but changed the outputs by {error:.3g} (relative), "
                    f"above {self.exact_tolerance:g}; this is a bug in the pass",
                )
            stages.append(
                _stage(
                    p.name,
                    p.exact,
                    result.modified,
                    seconds,
                    current,
                    error,
                    dict(result.stats),
                    metric(current),
                )
            )
            reference = outputs
        return PipelineResult(graph_module=current, stages=tuple(stages))

    @staticmethod
    def _housekeeping(p: Pass, gm: GraphModule, inputs: tuple[torch.Tensor, ...]) -> None:
        try:
            gm.graph.lint()
        except Exception as exc:
            raise PassError(p.name, f"left an invalid graph: {exc}") from exc
        gm.recompile()
        try:
            propagate_shapes(gm, inputs)
        except Exception as exc:
            raise PassError(p.name, f"left a graph whose shapes do not propagate: {exc}") from exc


def _outputs(gm: GraphModule, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    with torch.no_grad():
        out = gm(*inputs)
    return [t.detach() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def relative_error(reference: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> float:
    """Worst over outputs of ``max|a − r| / max|r|`` (0 when both are all zero)."""
    worst = 0.0
    for ref, got in zip(reference, actual, strict=True):
        if ref.shape != got.shape:
            return float("inf")
        if not ref.numel() or not ref.is_floating_point():
            if not torch.equal(ref, got):
                return float("inf")
            continue
        ref64, got64 = ref.double(), got.double()
        scale = ref64.abs().max().item()
        diff = (ref64 - got64).abs().max().item()
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _stage(
    name: str,
    exact: bool,
    modified: bool,
    seconds: float,
    gm: GraphModule,
    error: float,
    stats: dict[str, Any],
    task_metric: dict[str, float] | None,
) -> StageReport:
    cost = analyze(gm)
    return StageReport(
        name=name,
        exact=exact,
        modified=modified,
        seconds=seconds,
        params=cost.params,
        macs=cost.macs,
        size_bytes=cost.size_bytes,
        peak_activation_bytes=cost.peak_activation_bytes,
        relative_error=error,
        stats=stats,
        task_metric=task_metric,
    )
