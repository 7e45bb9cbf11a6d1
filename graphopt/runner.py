"""The end-to-end job: capture → passes → backends → report (what ``graphopt run`` does)."""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.analysis import analyze
from graphopt.backends.base import Backend
from graphopt.capture import as_input_tuple, trace
from graphopt.errors import GraphoptError
from graphopt.pass_manager import PassManager
from graphopt.passes import Pass
from graphopt.report import BackendLatency, CompressionReport

__all__ = ["CompressionRun", "compress", "evaluate_metric"]

EvalFn = Callable[[nn.Module], "float | dict[str, float]"]


@dataclass(frozen=True)
class CompressionRun:
    original: GraphModule
    compressed: GraphModule
    example_inputs: tuple[torch.Tensor, ...]
    report: CompressionReport


def compress(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    passes: Sequence[Pass],
    *,
    backends: Sequence[Backend] = (),
    evaluate: EvalFn | None = None,
    warmup: int = 10,
    runs: int = 50,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> CompressionRun:
    """Capture ``model``, run ``passes``, measure on ``backends`` and build the report.

    The user's model is never modified (``trace`` deep-copies it). Backend latencies of the
    original and the compressed graph are measured interleaved in one loop per backend.
    """
    inputs = as_input_tuple(example_inputs)
    say = progress or (lambda _msg: None)
    say("capturing with torch.export")
    original = trace(model, inputs)
    say(f"running {len(passes)} pass(es)")
    result = PassManager(passes).run(original, inputs)
    compressed = result.graph_module
    latencies = []
    for backend in backends:
        say(f"compiling and timing on {backend.name}")
        latencies.append(
            measure_pair(backend, original, compressed, inputs, warmup=warmup, runs=runs)
        )
    task_metric = None
    if evaluate is not None:
        say("evaluating the task metric")
        task_metric = {
            "original": evaluate_metric(evaluate, original),
            "compressed": evaluate_metric(evaluate, compressed),
        }
    report = CompressionReport(
        model=name or type(model).__name__,
        original=analyze(original),
        compressed=analyze(compressed),
        stages=result.stages,
        latencies=tuple(latencies),
        task_metric=task_metric,
    )
    return CompressionRun(original, compressed, inputs, report)


def measure_pair(
    backend: Backend,
    original: nn.Module,
    compressed: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    warmup: int,
    runs: int,
) -> BackendLatency:
    """Original vs compressed on one backend: output check and interleaved timing."""
    from graphopt.backends.compare import compare_on_backend

    comparison = compare_on_backend(
        backend, {"original": original, "compressed": compressed}, inputs, warmup=warmup, runs=runs
    )
    orig, comp = comparison.results["original"], comparison.results["compressed"]
    return BackendLatency(
        backend=backend.name,
        original_ms=orig.latency.median_ms,
        compressed_ms=comp.latency.median_ms,
        original_p90_ms=orig.latency.p90_ms,
        compressed_p90_ms=comp.latency.p90_ms,
        max_rel_diff=comp.max_rel_diff,
        info=dict(comp.info),
    )


def evaluate_metric(evaluate: EvalFn, model: nn.Module) -> dict[str, float]:
    """Call the user's evaluation function; its failure is reported with its traceback once."""
    try:
        value: Any = evaluate(model)
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc)).rstrip()
        raise GraphoptError(
            f"the evaluation function raised {type(exc).__name__}: {exc}\n{tb}"
        ) from exc
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {"metric": float(value)}
