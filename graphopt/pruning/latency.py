"""Latency as the pruning cost: per-layer tables measured on the backend (HALP / NetAdapt).

Why not MACs: a pruned channel saves time in proportion to what the backend's kernel does
with it, and that is not proportional to MACs. A depthwise conv has few MACs but is
memory-bound; ONNX Runtime's blocked (NCHWc) conv kernels run a count off their block as
slowly as the next multiple; and a layer at full resolution costs more per MAC than one at
7×7. So with ``prune: {target_latency: t}`` the cost model predicts each conv's and
linear's latency from a table measured once per machine on the recipe's first backend and
the search stops at ``t`` × the predicted latency of those layers.

The table (``LayerTable``): for every conv/linear node, the latency of that layer alone (its
own shapes, batch and resolution) at a grid of kept input × output channel counts — the
full count and 3/4, 1/2, 1/4 of it, each rounded up to a multiple of 8 once it is 16 or
more, so the samples are the counts a ``round_to`` of 8 or 16 produces — interpolated
bilinearly between samples (linearly extrapolated below the smallest). A depthwise conv,
whose inputs and outputs are the same channels, has a 1-D table. Layers with MACs but no
measurable form here (attention, a matmul of two activations) cost their MACs times the
median seconds-per-MAC of the measured layers, so the search still sees them.

A model that is quantized after pruning runs other kernels (QLinearConv on ORT), whose cost
per channel differs from float's: ``prune: {latency_precision: int8}`` asks for the tables of
the layers as int8 QDQ layers (``LayerSpec.precision``), so the channels removed are the ones
that save time in the deployed int8 model.

Measuring is the backend's (``PassContext.layer_latency``: ``specs -> seconds``, e.g.
``graphopt.backends.layer_latency``), which also caches; here ``LayerSpec`` only describes a
layer and the table only interpolates. Equal specs (repeated blocks) are measured once.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import is_op, node_shape
from graphopt.pruning.groups import PruningGroup
from graphopt.pruning.policy import CostModel

__all__ = [
    "GRID",
    "LatencyCostModel",
    "LayerLatency",
    "LayerSpec",
    "LayerTable",
    "layer_spec",
    "sample_counts",
]

GRID = (0.25, 0.5, 0.75, 1.0)
_aten = torch.ops.aten
_CONVS = (_aten.conv1d.default, _aten.conv2d.default, _aten.convolution.default)


@dataclass(frozen=True)
class LayerSpec:
    """One conv or linear layer as the backend runs it: enough to build it alone."""

    kind: str  # "conv" or "linear"
    input_shape: tuple[int, ...]  # with the batch; a linear's last dim is in_channels
    out_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    precision: str = "fp32"  # "int8": as a QDQ layer that the backend runs on int8 kernels

    @property
    def in_channels(self) -> int:
        return self.input_shape[1] if self.kind == "conv" else self.input_shape[-1]

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels

    def resized(self, in_channels: int, out_channels: int) -> LayerSpec:
        """The same layer with other channel counts (a depthwise one keeps in = out = groups)."""
        shape = list(self.input_shape)
        shape[1 if self.kind == "conv" else -1] = in_channels
        groups = in_channels if self.depthwise else self.groups
        return replace(self, input_shape=tuple(shape), out_channels=out_channels, groups=groups)

    def key(self) -> str:
        """A stable text key (the backend's cache key)."""
        parts = [self.kind, "x".join(map(str, self.input_shape)), str(self.out_channels)]
        for values in (self.kernel, self.stride, self.padding, self.dilation):
            parts.append("x".join(map(str, values)) or "-")
        parts += [f"g{self.groups}", "b" if self.bias else "nb"]
        if self.precision != "fp32":  # fp32 keys stay as they were: cached tables still read
            parts.append(self.precision)
        return ",".join(parts)


LayerLatency = Callable[[Sequence[LayerSpec]], Sequence[float]]


def _concrete(shape: Sequence[object], batch: int | None = None) -> tuple[int, ...] | None:
    """Sizes as ints, or None. A symbolic size is taken at its example value, except a
    symbolic first dimension (the batch) when ``batch`` is given: capture repeats a batch of
    1 to 2 to keep it dynamic, so the example value of the symbol is 2 where the user's
    example inputs, the batch the model is timed and deployed at, have 1."""
    out = []
    for position, size in enumerate(shape):
        if isinstance(size, torch.SymInt):
            hint = batch if position == 0 and batch is not None else size.node.hint
            if hint is None:
                return None
            size = hint
        out.append(int(size))
    return tuple(out)


def layer_spec(gm: GraphModule, node: Node, batch: int | None = None) -> LayerSpec | None:
    """The spec of a conv (1-d/2-d, not transposed) or linear node; None for anything else.
    ``batch``: the size a symbolic batch dimension is timed at (default: its example value)."""
    x = node.args[0] if node.args else None
    weight = node.args[1] if len(node.args) > 1 else None
    shape = _concrete(node_shape(x) or (), batch) if isinstance(x, Node) else None
    wshape = _concrete(node_shape(weight) or ()) if isinstance(weight, Node) else None
    if not shape or not wshape:
        return None
    has_bias = len(node.args) > 2 and node.args[2] is not None
    if is_op(node, [_aten.linear.default]):
        return LayerSpec("linear", shape, wshape[0], bias=has_bias)
    if not is_op(node, list(_CONVS)) or len(shape) not in (3, 4):
        return None
    args = list(node.args) + [None] * 9
    if is_op(node, [_aten.convolution.default]):
        if args[6]:  # transposed
            return None
        stride, padding, dilation, groups = args[3], args[4], args[5], args[8]
    else:
        stride, padding, dilation, groups = args[3], args[4], args[5], args[6]
    if isinstance(padding, str):
        return None
    dims = len(shape) - 2

    def ints(value: object, default: int) -> tuple[int, ...]:
        if value is None:
            return (default,) * dims
        values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
        return values * dims if len(values) == 1 else values

    return LayerSpec(
        "conv",
        shape,
        wshape[0],
        kernel=tuple(wshape[2:]),
        stride=ints(stride, 1),
        padding=ints(padding, 0),
        dilation=ints(dilation, 1),
        groups=int(groups or 1),
        bias=has_bias,
    )


def sample_counts(channels: int) -> tuple[int, ...]:
    """The channel counts a table samples: ``GRID`` × ``channels``, rounded up to a
    multiple of 8 from 16 on, distinct, ascending (the full count always included)."""
    counts = set()
    for fraction in GRID:
        c = max(1, round(fraction * channels))
        if c >= 16:
            c = min(channels, -(-c // 8) * 8)
        counts.add(c)
    counts.add(channels)
    return tuple(sorted(counts))


class LayerTable:
    """Latency of one layer over kept (input, output) channel counts, interpolated."""

    def __init__(
        self, ins: Sequence[int], outs: Sequence[int], seconds: Mapping[tuple[int, int], float]
    ) -> None:
        self.ins, self.outs, self.seconds = tuple(ins), tuple(outs), dict(seconds)

    def at(self, kept_in: float, kept_out: float) -> float:
        """Seconds at ``kept_in`` inputs and ``kept_out`` outputs (counts, may be fractional)."""
        i0, i1, wi = _bracket(self.ins, kept_in)
        o0, o1, wo = _bracket(self.outs, kept_out)
        s = self.seconds
        low = s[(i0, o0)] * (1 - wo) + s[(i0, o1)] * wo
        high = s[(i1, o0)] * (1 - wo) + s[(i1, o1)] * wo
        return max(low * (1 - wi) + high * wi, 0.0)


def _bracket(points: Sequence[int], x: float) -> tuple[int, int, float]:
    """Neighbouring samples around ``x`` and ``x``'s weight on the second (extrapolates)."""
    if len(points) == 1:
        return points[0], points[0], 0.0
    k = min(max(bisect.bisect_left(points, x), 1), len(points) - 1)
    a, b = points[k - 1], points[k]
    return a, b, (x - a) / (b - a)


class LatencyCostModel(CostModel):
    """``CostModel`` whose unit is seconds: what ``select_for_macs`` minimises becomes the
    predicted latency of the model's conv, linear and other MAC-carrying layers."""

    def __init__(
        self,
        gm: GraphModule,
        groups: Sequence[PruningGroup],
        measure: LayerLatency,
        precision: str = "fp32",
        batch: int | None = None,
    ) -> None:
        super().__init__(gm, groups)
        nodes = {n.name: n for n in gm.graph.nodes}
        self.macs = dict(self.base)
        specs = {name: layer_spec(gm, nodes[name], batch) for name in self.base}
        specs = {k: v and replace(v, precision=precision) for k, v in specs.items()}
        self.tables, self.specs = self._measure(
            {k: v for k, v in specs.items() if v is not None}, measure
        )
        rates = [self.tables[n].at(*self._full(n)) / self.macs[n] for n in self.tables]
        self.seconds_per_mac = statistics.median(rates) if rates else 0.0
        self.base = {n: self._seconds(n, {}) for n in self.macs}
        self.node_macs = dict(self.base)
        self.total = self.original = sum(self.base.values()) + 0.0
        self.measured = len(self.tables)

    @property
    def original_macs(self) -> float:
        """The MACs before any removal (``total`` and ``original`` are seconds here)."""
        return float(sum(self.macs.values()))

    def predicted_macs(self) -> float:
        """The MACs after the removals so far (the MACs cost model's formula)."""
        return sum(self._node_macs(node, {}) for node in self.macs)

    def macs_saving(self, group_id: str, units: Sequence[int]) -> float:
        """The MACs (not seconds: that is ``saving``) removing ``units`` would save now."""
        extra = self._positions(group_id, units)
        nodes = {key[0] for key in extra}
        return sum(self._node_macs(n, {}) - self._node_macs(n, extra) for n in nodes)

    def _node_macs(self, node: str, extra: Mapping[tuple[str, str], int]) -> float:
        return self._scaled(float(self.macs[node]), node, extra)

    def _full(self, node: str) -> tuple[int, int]:
        spec = self.specs[node]
        return spec.in_channels, spec.out_channels

    def _measure(
        self, specs: Mapping[str, LayerSpec], measure: LayerLatency
    ) -> tuple[dict[str, LayerTable], dict[str, LayerSpec]]:
        grids = {}
        wanted: dict[str, LayerSpec] = {}
        for name, spec in specs.items():
            outs = sample_counts(spec.out_channels)
            prunable_in = (name, "in") in self.size and not spec.depthwise
            ins = sample_counts(spec.in_channels) if prunable_in else (spec.in_channels,)
            if spec.depthwise:
                points = [(c, c) for c in outs]
                ins = outs
            else:
                points = [(i, o) for i in ins for o in outs]
            grids[name] = (ins, outs, points)
            for i, o in points:
                sized = spec.resized(i, o)
                wanted.setdefault(sized.key(), sized)
        keys = list(wanted)
        seconds = dict(zip(keys, measure([wanted[k] for k in keys]), strict=True))
        tables = {}
        for name, (ins, outs, points) in grids.items():
            spec = specs[name]
            values = {(i, o): float(seconds[spec.resized(i, o).key()]) for i, o in points}
            if spec.depthwise:  # one dimension: the same value whatever the "input" count
                values = {(i, o): values[(o, o)] for i in ins for o in outs}
            tables[name] = LayerTable(ins, outs, values)
        return tables, dict(specs)

    def _macs(self, node: str, extra: Mapping[tuple[str, str], int]) -> float:
        return self._seconds(node, extra)

    def _seconds(self, node: str, extra: Mapping[tuple[str, str], int]) -> float:
        kept = self._kept(node, extra)
        table = self.tables.get(node)
        if table is None:
            return self.macs[node] * math.prod(kept.values()) * self.seconds_per_mac
        full_in, full_out = self._full(node)
        out = kept.get("out", 1.0) * full_out
        if self.specs[node].depthwise:
            return table.at(out, out)
        return table.at(kept.get("in", 1.0) * full_in, out)
