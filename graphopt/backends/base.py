"""The backend protocol: compile a captured model for a runtime, run it, time it.

Backends are the only place that imports a runtime (onnxruntime, tvm), and they do it lazily
inside ``compile`` so that ``import graphopt`` never needs an optional runtime. Timing on shared
machines is noisy, so comparisons are interleaved in one loop (``measure_interleaved``) and
reported as ratios; no absolute-time conclusion is drawn from one number.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

__all__ = [
    "Backend",
    "CompiledModel",
    "LatencyStats",
    "describe_model",
    "flat_torch_outputs",
    "max_abs_diff",
    "measure_interleaved",
    "to_numpy_inputs",
]


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model on one backend: milliseconds per call over ``runs`` timed calls."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    batch_size: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch_size * 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")

    @classmethod
    def from_samples(cls, samples_s: Sequence[float], batch_size: int) -> LatencyStats:
        ms = sorted(s * 1000.0 for s in samples_s)
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        return cls(
            median_ms=statistics.median(ms),
            p90_ms=p90,
            mean_ms=statistics.fmean(ms),
            min_ms=ms[0],
            runs=len(ms),
            batch_size=batch_size,
        )

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "throughput": self.throughput}


@runtime_checkable
class CompiledModel(Protocol):
    """A model ready to run on one backend."""

    backend: str
    info: dict[str, Any]  # backend facts for the report, e.g. {"tuned": True, "onnx_path": ...}

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run on numpy inputs, return the flat list of numpy outputs."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Lowers a module (usually a traced GraphModule) to a runtime."""

    name: str

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
    ) -> CompiledModel: ...


@dataclass
class _Timer:
    fn: Callable[[], object]
    samples: list[float] = field(default_factory=list)


def measure_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    batch_size: int,
    warmup: int = 10,
    runs: int = 50,
) -> dict[str, LatencyStats]:
    """Time several callables round-robin in one loop, so machine noise hits all alike."""
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    timers = {name: _Timer(fn) for name, fn in fns.items()}
    for _ in range(warmup):
        for timer in timers.values():
            timer.fn()
    for _ in range(runs):
        for timer in timers.values():
            start = time.perf_counter()
            timer.fn()
            timer.samples.append(time.perf_counter() - start)
    return {name: LatencyStats.from_samples(t.samples, batch_size) for name, t in timers.items()}


def to_numpy_inputs(inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().contiguous().numpy() for t in inputs]


def flat_torch_outputs(outputs: object) -> list[np.ndarray]:
    """Flatten a module's (possibly nested) outputs to numpy arrays, in pytree order."""
    leaves = torch.utils._pytree.tree_leaves(outputs)
    return [t.detach().cpu().numpy() for t in leaves if isinstance(t, torch.Tensor)]


def max_abs_diff(reference: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over all outputs (shapes must match)."""
    if len(reference) != len(actual):
        raise ValueError(f"output count differs: {len(reference)} vs {len(actual)}")
    worst = 0.0
    for ref, got in zip(reference, actual, strict=True):
        if ref.shape != got.shape:
            raise ValueError(f"output shape differs: {ref.shape} vs {got.shape}")
        if ref.size:
            worst = max(
                worst, float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
            )
    return worst


def describe_model(model: nn.Module) -> str:
    """A model's name for messages: ``GraphModule(ResNet)`` for a traced one, else its class.

    ``ExportedProgram.module()`` returns an instance of a generated class, so the class name
    alone would say nothing; ``trace`` records the source class in ``meta``.
    """
    if isinstance(model, torch.fx.GraphModule):
        source = model.meta.get("graphopt_source_class")
        return f"GraphModule({source})" if source else "GraphModule"
    return type(model).__name__
