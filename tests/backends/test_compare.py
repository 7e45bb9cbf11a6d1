"""Comparisons: ratio arithmetic on constructed stats, numerics via fake backends, structure.

No test asserts on measured time: ratios are checked against the stats they were computed
from, or on ``LatencyStats`` built by hand.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from graphopt.backends.base import LatencyStats, flat_torch_outputs
from graphopt.backends.compare import (
    BackendComparison,
    bench_backends,
    compare_on_backend,
    relative_diff,
    speedups,
)
from graphopt.backends.onnxruntime import OnnxRuntimeBackend
from graphopt.backends.torch_eager import TorchEagerBackend
from graphopt.capture import trace
from graphopt.errors import BackendUnavailableError, RecipeError


def _stats(median: float, runs: int = 5) -> LatencyStats:
    return LatencyStats(
        median_ms=median,
        p90_ms=median * 1.5,
        mean_ms=median,
        min_ms=median / 2,
        runs=runs,
        batch_size=1,
    )


class _Offset:
    """A compiled model that returns eager's outputs plus a constant: known numerics."""

    backend = "fake"

    def __init__(self, model: nn.Module, offset: float) -> None:
        self.model, self.offset, self.info = model, offset, {"offset": offset}

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            out = flat_torch_outputs(self.model(*(torch.from_numpy(a) for a in inputs)))
        return [o + np.float32(self.offset) for o in out]


class OffsetBackend:
    def __init__(self, offset: float, name: str = "fake") -> None:
        self.offset, self.name = offset, name

    def compile(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
        return _Offset(model, self.offset)


class Unavailable:
    name = "tvm"

    def compile(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> Any:
        raise BackendUnavailableError("tvm is not installed; pip install apache-tvm")


@pytest.fixture
def mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    return model, (torch.randn(4, 6),)


# ---- arithmetic -------------------------------------------------------------------------------
def test_speedups_are_first_median_over_each_median() -> None:
    ratios = speedups({"original": _stats(8.0), "compressed": _stats(2.0), "slower": _stats(16.0)})
    assert ratios == {"original": 1.0, "compressed": 4.0, "slower": 0.5}
    assert speedups({}) == {}
    assert speedups({"a": _stats(1.0), "b": _stats(0.0)})["b"] == math.inf


def test_relative_diff_divides_by_the_largest_reference_magnitude() -> None:
    reference = [np.array([1.0, -4.0]), np.array([[2.0]])]
    actual = [np.array([1.5, -4.0]), np.array([[2.0]])]
    assert relative_diff(reference, actual) == pytest.approx(0.5 / 4.0)
    assert relative_diff([np.zeros(3)], [np.zeros(3)]) == 0.0
    assert relative_diff([np.zeros(3)], [np.ones(3)]) == math.inf


def test_latency_stats_are_consistent() -> None:
    stats = LatencyStats.from_samples([0.004, 0.001, 0.003, 0.002, 0.010], batch_size=2)
    assert stats.runs == 5
    assert stats.min_ms <= stats.median_ms <= stats.p90_ms
    assert stats.median_ms == pytest.approx(3.0)
    assert stats.throughput == pytest.approx(2 * 1000.0 / 3.0)


# ---- compare_on_backend -----------------------------------------------------------------------
def test_compare_on_backend_structure_and_ratios(mlp: tuple) -> None:
    model, inputs = mlp
    other = nn.Sequential(nn.Linear(6, 3)).eval()
    result = compare_on_backend(
        TorchEagerBackend(), {"original": model, "compressed": other}, inputs, warmup=1, runs=7
    )
    assert isinstance(result, BackendComparison)
    assert list(result.results) == ["original", "compressed"]
    assert result.baseline == "original"
    orig, comp = result.results["original"], result.results["compressed"]
    for entry in (orig, comp):
        assert entry.backend == "torch"
        assert entry.latency.runs == 7
        assert entry.latency.batch_size == 4
        assert entry.latency.min_ms <= entry.latency.median_ms <= entry.latency.p90_ms
        assert entry.max_abs_diff == 0.0  # each model is checked against its own eager output
    assert orig.speedup == 1.0
    assert comp.speedup == pytest.approx(orig.latency.median_ms / comp.latency.median_ms)
    assert result.speedups == {"original": 1.0, "compressed": comp.speedup}


def test_compare_reports_numerics_of_each_model(mlp: tuple) -> None:
    model, inputs = mlp
    result = compare_on_backend(OffsetBackend(0.25), {"m": model}, inputs, warmup=0, runs=1)
    with torch.inference_mode():
        scale = float(model(*inputs).abs().max())
    entry = result.results["m"]
    assert entry.max_abs_diff == pytest.approx(0.25, rel=1e-5)
    assert entry.max_rel_diff == pytest.approx(0.25 / scale, rel=1e-5)
    assert entry.info == {"offset": 0.25}


def test_to_dict_is_json_ready(mlp: tuple) -> None:
    model, inputs = mlp
    result = compare_on_backend(TorchEagerBackend(), {"a": model}, inputs, warmup=0, runs=2)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["baseline"] == "a"
    assert data["runs"] == 2
    assert set(data["results"]["a"]["latency"]) >= {"median_ms", "p90_ms", "runs", "throughput"}
    assert data["results"]["a"]["speedup"] == 1.0


def test_compare_needs_a_model(mlp: tuple) -> None:
    _, inputs = mlp
    with pytest.raises(RecipeError, match="at least one model"):
        compare_on_backend(TorchEagerBackend(), {}, inputs)


def test_compare_on_onnxruntime_original_vs_rewritten() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    inputs = (torch.randn(1, 3, 16, 16),)
    original = trace(model, inputs)
    smaller = trace(nn.Sequential(*list(model)[:1], *list(model)[2:]).eval(), inputs)
    result = compare_on_backend(
        OnnxRuntimeBackend(),
        {"original": original, "compressed": smaller},
        inputs,
        warmup=1,
        runs=3,
    )
    assert all(e.max_rel_diff <= 1e-4 for e in result.results.values())
    assert result.results["compressed"].info["exporter"] == "torch.onnx.export(dynamo=True)"
    assert result.results["original"].speedup == 1.0


# ---- bench_backends ---------------------------------------------------------------------------
def test_bench_backends_keys_baseline_and_ratios(mlp: tuple) -> None:
    model, inputs = mlp
    result = bench_backends(
        model,
        inputs,
        [TorchEagerBackend(), OffsetBackend(0.0), OffsetBackend(0.0)],
        warmup=1,
        runs=4,
    )
    assert list(result.results) == ["torch", "fake", "fake#2"]
    assert result.baseline == "torch"
    base = result.results["torch"].latency.median_ms
    for name, entry in result.results.items():
        assert entry.speedup == pytest.approx(base / entry.latency.median_ms)
        assert entry.max_abs_diff == 0.0
        assert result.speedups[name] == entry.speedup
    assert result.skipped == {}


def test_bench_backends_skips_unavailable_when_asked(mlp: tuple) -> None:
    model, inputs = mlp
    backends = [TorchEagerBackend(), Unavailable()]
    with pytest.raises(BackendUnavailableError):
        bench_backends(model, inputs, backends, warmup=0, runs=1)
    result = bench_backends(model, inputs, backends, warmup=0, runs=1, skip_failures=True)
    assert list(result.results) == ["torch"]
    assert "BackendUnavailableError" in result.skipped["tvm"]
    assert "pip install" in result.skipped["tvm"]
    assert json.loads(json.dumps(result.to_dict()))["skipped"] == dict(result.skipped)


def test_bench_backends_baseline_must_compile(mlp: tuple) -> None:
    model, inputs = mlp
    with pytest.raises(BackendUnavailableError):
        bench_backends(model, inputs, [Unavailable(), TorchEagerBackend()], skip_failures=True)


def test_bench_backends_torch_vs_onnxruntime(mlp: tuple) -> None:
    model, inputs = mlp
    gm = trace(model, inputs)
    result = bench_backends(gm, inputs, [TorchEagerBackend(), OnnxRuntimeBackend()], runs=3)
    assert list(result.results) == ["torch", "onnxruntime"]
    assert result.results["onnxruntime"].max_rel_diff <= 1e-4
    assert result.results["onnxruntime"].backend == "onnxruntime"
    assert result.results["torch"].speedup == 1.0
