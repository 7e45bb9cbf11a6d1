"""Compare models on one backend, or one model on several backends: numerics and latency.

Both comparisons compile everything first, check every compiled output against the eager
output of the module it came from, then time all compiled models round-robin in ONE loop
(``measure_interleaved``), so a noisy neighbour slows every entry alike and the ratios stay
meaningful even when the absolute times do not.

Speed-up is reported as in the compression literature, s/s* = median of the first entry (the
original model, or the first backend, typically torch eager) / median of this entry: above 1
is faster. The relative error is max |eager - backend| / max |eager|, over all outputs, so a
tolerance means the same thing for logits of size 10 and of size 1000.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.backends.base import (
    Backend,
    CompiledModel,
    LatencyStats,
    flat_torch_outputs,
    max_abs_diff,
    measure_interleaved,
    to_numpy_inputs,
)
from graphopt.capture import as_input_tuple
from graphopt.errors import BackendError, RecipeError

__all__ = [
    "BackendComparison",
    "ComparisonEntry",
    "bench_backends",
    "compare_on_backend",
    "relative_diff",
    "speedups",
]


@dataclass(frozen=True)
class ComparisonEntry:
    """One timed entry: a model on a backend, its numerics against eager and its latency."""

    name: str  # the model's name (compare_on_backend) or the backend's (bench_backends)
    backend: str
    latency: LatencyStats
    max_abs_diff: float
    max_rel_diff: float
    speedup: float  # s/s*: the first entry's median / this entry's median
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "latency": self.latency.to_dict(),
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "speedup": self.speedup,
            "info": dict(self.info),
        }


@dataclass(frozen=True)
class BackendComparison:
    """Entries timed together; ``baseline`` names the entry every speed-up is relative to.

    ``skipped`` maps an entry that could not be compiled to the reason (only filled when the
    caller asked to skip failures).
    """

    baseline: str
    results: Mapping[str, ComparisonEntry]
    warmup: int
    runs: int
    skipped: Mapping[str, str] = field(default_factory=dict)

    @property
    def speedups(self) -> dict[str, float]:
        return {name: entry.speedup for name, entry in self.results.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "warmup": self.warmup,
            "runs": self.runs,
            "results": {name: entry.to_dict() for name, entry in self.results.items()},
            "skipped": dict(self.skipped),
        }


def speedups(stats: Mapping[str, LatencyStats]) -> dict[str, float]:
    """s/s* of every entry against the first one: ``median_first / median_entry``."""
    if not stats:
        return {}
    first = next(iter(stats.values())).median_ms
    return {name: first / s.median_ms if s.median_ms > 0 else math.inf for name, s in stats.items()}


def relative_diff(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """``graphopt.fidelity.relative_error``: the pipeline's one relative error, on arrays."""
    from graphopt.fidelity import relative_error

    return relative_error(reference, actual)


def compare_on_backend(
    backend: Backend,
    models: Mapping[str, nn.Module],
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    warmup: int = 10,
    runs: int = 50,
) -> BackendComparison:
    """Compile every model on ``backend``, check it against its own eager outputs, time all.

    The first model of ``models`` is the baseline (e.g. ``{"original": ..., "compressed":
    ...}``). A compile failure raises: a comparison with a missing model would be misleading.
    """
    if not models:
        raise RecipeError("compare_on_backend needs at least one model")
    inputs = as_input_tuple(example_inputs, error=RecipeError)
    arrays = to_numpy_inputs(inputs)
    compiled = {name: backend.compile(model, inputs) for name, model in models.items()}
    numerics = {
        name: _numerics(_eager_outputs(models[name], inputs), compiled[name], arrays, name)
        for name in models
    }
    return _timed(compiled, numerics, arrays, inputs, warmup, runs, {})


def bench_backends(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    backends: Sequence[Backend],
    *,
    warmup: int = 10,
    runs: int = 50,
    skip_failures: bool = False,
) -> BackendComparison:
    """One model on several backends, timed interleaved; speed-ups against the first backend.

    With ``skip_failures`` a backend that cannot compile (say TVM is not installed) is left
    out and its reason recorded in ``skipped``, so a benchmark still compares the others; the
    first backend is the baseline and must compile. Entries are keyed by backend name, with
    ``#2``, ``#3``… appended when a name repeats (two ORT configurations, say).
    """
    if not backends:
        raise RecipeError("bench_backends needs at least one backend")
    inputs = as_input_tuple(example_inputs, error=RecipeError)
    arrays = to_numpy_inputs(inputs)
    reference = _eager_outputs(model, inputs)
    compiled: dict[str, CompiledModel] = {}
    numerics: dict[str, tuple[float, float]] = {}
    skipped: dict[str, str] = {}
    for key, backend in zip(_unique_names([b.name for b in backends]), backends, strict=True):
        try:
            candidate = backend.compile(model, inputs)
            numerics[key] = _numerics(reference, candidate, arrays, key)
        except Exception as exc:
            if not skip_failures or not compiled:  # the baseline itself must work
                raise
            skipped[key] = _one_line(exc)
            continue
        compiled[key] = candidate
    return _timed(compiled, numerics, arrays, inputs, warmup, runs, skipped)


def _timed(
    compiled: Mapping[str, CompiledModel],
    numerics: Mapping[str, tuple[float, float]],
    arrays: list[np.ndarray],
    inputs: tuple[torch.Tensor, ...],
    warmup: int,
    runs: int,
    skipped: Mapping[str, str],
) -> BackendComparison:
    fns = {name: (lambda c=c: c.run(arrays)) for name, c in compiled.items()}
    stats = measure_interleaved(fns, batch_size=_batch_size(inputs), warmup=warmup, runs=runs)
    ratios = speedups(stats)
    results = {
        name: ComparisonEntry(
            name=name,
            backend=c.backend,
            latency=stats[name],
            max_abs_diff=numerics[name][0],
            max_rel_diff=numerics[name][1],
            speedup=ratios[name],
            info=dict(c.info),
        )
        for name, c in compiled.items()
    }
    return BackendComparison(
        baseline=next(iter(results)), results=results, warmup=warmup, runs=runs, skipped=skipped
    )


def _numerics(
    reference: list[np.ndarray], compiled: CompiledModel, arrays: list[np.ndarray], name: str
) -> tuple[float, float]:
    actual = compiled.run(arrays)
    try:
        return max_abs_diff(reference, actual), relative_diff(reference, actual)
    except ValueError as exc:
        raise BackendError(
            f"{compiled.backend}: the outputs of {name!r} do not match eager's ({exc}); the "
            "export dropped or reshaped an output"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _eager_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    with torch.inference_mode():
        return flat_torch_outputs(model(*inputs))


def _batch_size(inputs: tuple[torch.Tensor, ...]) -> int:
    return int(inputs[0].shape[0]) if inputs and inputs[0].dim() > 0 else 1


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique
