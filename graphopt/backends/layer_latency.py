"""Latency of single conv and linear layers on ONNX Runtime, measured once and cached.

``prune: {target_latency: …}`` needs the latency of every conv/linear at several channel
counts (``graphopt.pruning.latency``). Exporting each variant through ``torch.onnx.export``
takes about a second; a one-node ONNX model built with ``onnx.helper`` loads in
milliseconds, so a table of ResNet-50's distinct layers (about 300 variants) is measured in
well under a minute and then read from the cache.

Each variant runs in its own session with the backend's settings (intra-op threads, graph
optimisation level, no spinning), random float32 weights and inputs: ``warmup`` runs, then
the median of ``runs``, less the time of the layout conversions ORT wraps around a layer that
is alone in its model (``LAYOUT_OPS``: ``ReorderInput``/``ReorderOutput`` into and out of the
NCHWc blocked layout for float convs, the two ``Transpose`` nodes to and from NHWC for int8).
A whole model converts once at its ends and keeps the layout between layers, so those nodes
are not the layer's cost; they are timed in a second, profiled session (ORT's per-node kernel
times, the mean over ``runs``) and subtracted. Measured here (ORT 1.32, AVX-512, 1 thread):
MobileNetV2's first depthwise conv (96 channels, 112×112, stride 2) is 72 µs of Conv inside
115 + 27 µs of reorders in float, 82 µs of QLinearConv inside 77 µs of transposes in int8; a
1×1 conv 320→1280 at 7×7 has 9 µs around 160. The conversions scale with a layer's
activations, not its MACs, so leaving them in made the tables rate the channels of
high-resolution, memory-bound layers at two to three times the time they save in a model.

A linear is a ``Gemm`` on a 2-d input, else ``MatMul`` + ``Add`` (the forms the exporter
emits, which ORT fuses the same way). A spec of ``precision`` int8 is the
layer as ``quantize`` (static int8, U8S8) leaves it: a uint8 input, ``DequantizeLinear`` of it
and of the per-channel int8 weight (int32 bias), the layer, ``QuantizeLinear`` of the output —
the QDQ unit that ORT fuses into ``QLinearConv`` / ``QGemm``, fed uint8. Alone, ORT runs an
int8 conv in NHWC between two ``Transpose`` nodes, which a whole int8 model has only at its
ends; they are subtracted as above.

The cache: one JSON file per machine and runtime under
``$XDG_CACHE_HOME/graphopt/layer_latency/``, named by a hash of the CPU model, core count,
ORT version, thread count, optimisation level and this table's format version, so a table
from another machine or runtime is never read. Entries are read only when they are a
positive, finite number; a file that does not parse, or holds another key set, is ignored
and rewritten; a wrong entry is measured again. Writes are atomic
(``graphopt.cache.atomic_write``), so concurrent runs never leave a torn file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from graphopt.cache import atomic_write, cache_root
from graphopt.pruning.latency import LayerSpec

__all__ = ["FORMAT", "LAYOUT_OPS", "OrtLayerLatency", "kernel_times", "layout_seconds"]

FORMAT = 2  # 2: layout conversions subtracted (format 1 tables timed them with the layer)
LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose"})


class OrtLayerLatency:
    """``specs -> seconds`` on ONNX Runtime's CPU provider, with a per-machine cache."""

    def __init__(
        self,
        *,
        intra_op_threads: int | None = None,
        optimization: str = "ORT_ENABLE_ALL",
        warmup: int = 3,
        runs: int = 15,
        cache: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.ort = ort
        self.threads = intra_op_threads or 0
        self.optimization = optimization
        self.warmup, self.runs = warmup, runs
        self.path = cache_root("layer_latency", f"{self._machine_key()}.json") if cache else None
        self.measured = 0  # variants measured (not read from the cache) by this instance

    def __call__(self, specs: Sequence[LayerSpec]) -> list[float]:
        table = self._load()
        missing = [s for s in dict.fromkeys(specs) if not _valid(table.get(s.key()))]
        for spec in missing:
            table[spec.key()] = self.measure(spec)
            self.measured += 1
        if missing and self.path is not None:
            self._store(table)
        return [float(table[s.key()]) for s in specs]

    def measure(self, spec: LayerSpec) -> float:
        """Median seconds of one run of the layer alone, less its layout conversions."""
        rng = np.random.default_rng(0)
        if spec.precision == "int8":
            x = rng.integers(0, 256, spec.input_shape, dtype=np.uint8)
            model = _int8_model(spec)
        else:
            x = rng.standard_normal(spec.input_shape, dtype=np.float32)
            model = _model(spec)
        serialized, feed = model.SerializeToString(), {"x": x}
        session = self._session(serialized)
        for _ in range(self.warmup):
            session.run(None, feed)
        times = []
        for _ in range(self.runs):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        wall = statistics.median(times)
        layout = self._layout_seconds(serialized, feed)
        # the layer's own kernel is never less than a tenth of the call (a guard against a
        # noisy profile making the entry zero or negative, which the table would reject)
        return max(wall - layout, wall / 10)

    def _session(self, serialized: bytes, profile_prefix: str | None = None) -> Any:
        """A session with the backend's settings (profiled when ``profile_prefix`` is given)."""
        ort = self.ort
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, self.optimization)
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix is not None:
            options.enable_profiling = True
            options.profile_file_prefix = profile_prefix
        return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])

    def _layout_seconds(self, serialized: bytes, feed: dict[str, Any]) -> float:
        """Mean seconds a run spends in ``LAYOUT_OPS`` nodes, from ORT's profiler."""
        with tempfile.TemporaryDirectory(prefix="graphopt-layer-profile-") as folder:
            session = self._session(serialized, str(Path(folder) / "layer"))
            for _ in range(self.warmup + self.runs):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        return layout_seconds(events, skip=self.warmup)

    def _machine_key(self) -> str:
        facts = {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "onnxruntime": self.ort.__version__,
            "threads": self.threads,
            "optimization": self.optimization,
            "format": FORMAT,
        }
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # unreadable or torn: measured again, then rewritten
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return {}
        entries = data.get("seconds")
        return {k: v for k, v in entries.items() if _valid(v)} if isinstance(entries, dict) else {}

    def _store(self, table: dict[str, Any]) -> None:
        payload = {"format": FORMAT, "seconds": dict(sorted(table.items()))}
        atomic_write(Path(self.path), json.dumps(payload, indent=0).encode())


def kernel_times(events: Sequence[dict[str, Any]]) -> dict[str, tuple[str, list[float]]]:
    """Per node of an ORT profile (``events``, its JSON): its op type and the seconds of each
    of its kernel runs, in order (nodes in the order they first ran)."""
    nodes: dict[str, tuple[str, list[float]]] = {}
    for event in events:
        name = str(event.get("name", ""))
        if event.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        op = str((event.get("args") or {}).get("op_name", "?"))
        nodes.setdefault(name, (op, []))[1].append(float(event.get("dur", 0)) * 1e-6)
    return nodes


def layout_seconds(events: Sequence[dict[str, Any]], skip: int = 0) -> float:
    """Mean seconds per run of the ``LAYOUT_OPS`` nodes in an ORT profile (``events``, its
    JSON), leaving out each node's first ``skip`` runs (the warm-up)."""
    return sum(
        statistics.fmean(runs[skip:] or runs)
        for op, runs in kernel_times(events).values()
        if op in LAYOUT_OPS
    )


def _valid(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _model(spec: LayerSpec) -> Any:
    """A one-layer ONNX model (opset 18) with input ``x`` and random float32 weights."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    cin, cout = spec.in_channels, spec.out_channels
    inits, nodes = [], []
    if spec.kind == "conv":
        weight = rng.standard_normal((cout, cin // spec.groups, *spec.kernel), dtype=np.float32)
        inits.append(numpy_helper.from_array(weight, "w"))
        inputs = ["x", "w"]
        if spec.bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
            inputs.append("b")
        nodes.append(_conv_node(spec, inputs, "y"))
    else:
        weight = rng.standard_normal((cin, cout), dtype=np.float32)
        inits.append(numpy_helper.from_array(weight, "w"))
        bias = np.zeros(cout, np.float32)
        if len(spec.input_shape) == 2:
            inputs = ["x", "w"] + (["b"] if spec.bias else [])
            nodes.append(helper.make_node("Gemm", inputs, ["y"]))
        else:
            nodes.append(helper.make_node("MatMul", ["x", "w"], ["y" if not spec.bias else "m"]))
            if spec.bias:
                nodes.append(helper.make_node("Add", ["m", "b"], ["y"]))
        if spec.bias:
            inits.append(numpy_helper.from_array(bias, "b"))
    return _one_layer_model(spec, nodes, inits, TensorProto.FLOAT)


def _conv_node(spec: LayerSpec, inputs: list[str], output: str) -> Any:
    """The spec's ``Conv`` node (float, or between QDQ pairs in the int8 model)."""
    from onnx import helper

    return helper.make_node(
        "Conv",
        inputs,
        [output],
        kernel_shape=list(spec.kernel),
        strides=list(spec.stride),
        pads=list(spec.padding) * 2,
        dilations=list(spec.dilation),
        group=spec.groups,
    )


def _one_layer_model(spec: LayerSpec, nodes: list[Any], inits: list[Any], elem_type: int) -> Any:
    """An opset-18 model of ``nodes`` from input ``x`` to output ``y``, both ``elem_type``."""
    from onnx import helper

    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("x", elem_type, list(spec.input_shape))],
        [helper.make_tensor_value_info("y", elem_type, None)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _int8_model(spec: LayerSpec) -> Any:
    """The layer as a QDQ unit on a uint8 input ``x`` (opset 18): what ORT runs as
    ``QLinearConv`` (or ``QLinearMatMul``) in a model that ``quantize`` made int8."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    cin, cout = spec.in_channels, spec.out_channels
    conv = spec.kind == "conv"
    wshape = (cout, cin // spec.groups, *spec.kernel) if conv else (cin, cout)
    weight = rng.integers(-127, 128, wshape, dtype=np.int8)
    scales = np.full(cout, 0.01, np.float32) if conv else np.float32(0.01)
    zeros = np.zeros(cout, np.int8) if conv else np.int8(0)
    inits = [
        numpy_helper.from_array(np.float32(0.05), "sx"),
        numpy_helper.from_array(np.uint8(128), "zx"),
        numpy_helper.from_array(weight, "wq"),
        numpy_helper.from_array(np.asarray(scales), "sw"),
        numpy_helper.from_array(np.asarray(zeros), "zw"),
        numpy_helper.from_array(np.float32(0.1), "sy"),
        numpy_helper.from_array(np.uint8(128), "zy"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["xf"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wf"], axis=0),
    ]
    if conv:
        inputs = ["xf", "wf"]
        if spec.bias:
            inits += [
                numpy_helper.from_array(np.zeros(cout, np.int32), "bq"),
                numpy_helper.from_array(np.full(cout, 0.05 * 0.01, np.float32), "sb"),
            ]
            nodes.append(helper.make_node("DequantizeLinear", ["bq", "sb"], ["bf"], axis=0))
            inputs.append("bf")
        nodes.append(_conv_node(spec, inputs, "yf"))
    else:  # the bias Add stays float after the int8 product, as the exporter's MatMul + Add
        nodes.append(helper.make_node("MatMul", ["xf", "wf"], ["mf" if spec.bias else "yf"]))
        if spec.bias:
            inits.append(numpy_helper.from_array(np.zeros(cout, np.float32), "b"))
            nodes.append(helper.make_node("Add", ["mf", "b"], ["yf"]))
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "sy", "zy"], ["y"]))
    return _one_layer_model(spec, nodes, inits, TensorProto.UINT8)
