"""The end-to-end job: capture → passes → backends → report (what ``graphopt run`` does)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.analysis import ModelStats, analyze
from graphopt.backends.base import Backend
from graphopt.capture import as_input_tuple, trace
from graphopt.data import TaskData
from graphopt.fidelity import output_fidelity
from graphopt.guards import ACTIVATION_COPIES, require_memory
from graphopt.metrics import EvalFn, evaluate_metric
from graphopt.pass_manager import PassManager
from graphopt.passes import Pass, PassContext
from graphopt.provenance import input_signature, machine, now_iso, versions
from graphopt.report import BackendLatency, CompressionReport
from graphopt.shapes import declared_shapes, describe

__all__ = ["CompressionRun", "compress", "evaluate_metric", "latency_probe"]


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
    data: TaskData | None = None,
    warmup: int = 10,
    runs: int = 50,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    dynamic_shapes: object = None,
) -> CompressionRun:
    """Capture ``model``, run ``passes``, measure on ``backends`` and build the report.

    The user's model is never modified (``trace`` deep-copies it, and captures the copy in
    eval mode with a ``UserWarning`` when the model was left in training mode: compressing
    batch-statistics BatchNorm and live dropout would measure the wrong model). Capture also
    refuses a forward that returns no tensors (``CaptureError``), which would otherwise be
    reported as 0 MACs. ``data`` (a ``TaskData``) gives passes training and calibration
    batches; its ``evaluate`` is used when ``evaluate`` is not given. With an evaluation
    function the task metric is measured after every stage. Passes also find the captured
    original (``"teacher"``, for distillation) and, when there is a backend, ``"latency"``: a
    probe timing a module on the first one. Backend latencies of the original and the
    compressed graph are measured interleaved in one loop per backend. ``dynamic_shapes``
    declares dimensions that stay dynamic beyond the batch (``graphopt.shapes``): every pass
    is checked to keep them and the ONNX export keeps them symbolic.
    """
    started_at = now_iso()
    inputs = as_input_tuple(example_inputs)
    say = progress or (lambda _msg: None)
    evaluate = evaluate or (data.evaluate if data is not None else None)
    say("capturing with torch.export")
    # symbolic: no activation is computed yet
    original = trace(model, inputs, dynamic_shapes=dynamic_shapes)
    original_stats = analyze(original)
    _require_activation_memory(original_stats, inputs)
    context = PassContext(
        inputs,
        teacher=original,
        train=data.train if data is not None else None,
        calibration=data.calibration if data is not None else None,
        validate=data.validate if data is not None else None,
        evaluate=evaluate,
        latency=latency_probe(backends[0], original, warmup=min(warmup, 5), runs=min(runs, 20))
        if backends
        else None,
        progress=say,
        layer_latency=_layer_latency(backends[0]) if backends else None,
    )
    say(f"running {len(passes)} pass(es)")
    result = PassManager(passes).run(original, inputs, context=context, evaluate=evaluate)
    compressed = result.graph_module
    latencies = []
    for backend in backends:
        say(f"compiling and timing on {backend.name}")
        latencies.append(
            measure_pair(backend, original, compressed, inputs, warmup=warmup, runs=runs)
        )
    task_metric = None
    if evaluate is not None:
        task_metric = {
            "original": result.stages[0].task_metric or {},
            "compressed": result.stages[-1].task_metric or {},
        }
    report = CompressionReport(
        model=name or type(model).__name__,
        original=original_stats,
        compressed=analyze(compressed),
        stages=result.stages,
        latencies=tuple(latencies),
        task_metric=task_metric,
        fidelity=output_fidelity(original, compressed, inputs),
        provenance={
            "versions": versions(),
            "machine": machine(),
            "inputs": {**input_signature(inputs), "dynamic": describe(declared_shapes(original))},
            "started_at": started_at,
            "finished_at": now_iso(),
        },
    )
    return CompressionRun(original, compressed, inputs, report)


def _require_activation_memory(stats: ModelStats, inputs: tuple[torch.Tensor, ...]) -> None:
    """Refuse, before anything runs for real, example inputs whose activations cannot fit."""
    batch = max((int(t.shape[0]) for t in inputs if t.dim()), default=1)
    needed = ACTIVATION_COPIES * stats.peak_activation_bytes * batch + sum(
        t.numel() * t.element_size() for t in inputs
    )
    shapes = ", ".join(str(list(t.shape)) for t in inputs)
    require_memory(needed, f"running the model on example inputs {shapes}")


def _layer_latency(backend: Backend) -> Callable[[Sequence[Any]], Sequence[float]] | None:
    """The backend's single-layer latency measurement, if it has one (for ``target_latency``
    pruning); built lazily, on the first call, so runs that never prune by latency pay
    nothing."""
    factory = getattr(backend, "layer_latency", None)
    if factory is None:
        return None
    state: dict[str, Any] = {}

    def measure(specs: Sequence[Any]) -> Sequence[float]:
        if "measure" not in state:
            state["measure"] = factory()
        return state["measure"](specs)

    return measure


def latency_probe(
    backend: Backend, reference: nn.Module, *, warmup: int = 5, runs: int = 20
) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], float]:
    """``probe(module, inputs) -> seconds`` on ``backend``, for latency-driven passes.

    On a shared machine one absolute median drifts with the load, so each candidate is timed
    round-robin against ``reference`` (compiled once) and reported as its ratio to the
    reference times the reference's first, longer measurement: candidates measured minutes
    apart stay comparable.
    """
    from graphopt.backends.base import measure_interleaved, to_numpy_inputs

    state: dict[str, Any] = {}

    def probe(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> float:
        arrays = to_numpy_inputs(inputs)
        batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
        if "reference" not in state:
            ref = backend.compile(reference, inputs)
            state["reference"] = ref
            baseline = measure_interleaved(
                {"ref": lambda: ref.run(arrays)}, batch_size=batch, warmup=warmup, runs=2 * runs
            )
            state["baseline_s"] = baseline["ref"].median_ms / 1e3
        ref, compiled = state["reference"], backend.compile(module, inputs)
        stats = measure_interleaved(
            {"ref": lambda: ref.run(arrays), "m": lambda: compiled.run(arrays)},
            batch_size=batch,
            warmup=warmup,
            runs=runs,
        )
        return state["baseline_s"] * stats["m"].median_ms / stats["ref"].median_ms

    return probe


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
