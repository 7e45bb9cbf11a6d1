"""Static cost analysis of a captured graph: params, MACs, size by dtype, peak activation memory.

Counts are per sample: when the batch dimension is symbolic (the default capture), every
symbolic size is evaluated at batch 1. MACs count multiply-accumulates of conv, linear,
matmul-family ops and attention (QKᵀ and AV); elementwise ops are not counted, as is usual.
Peak activation memory simulates the graph's execution order: an op's output is live from
its creation to its last use, views share their base's storage and allocate nothing.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import VIEW_OPS, get_tensor, is_op, module_path

__all__ = ["ModelStats", "NodeStats", "analyze"]

aten = torch.ops.aten
_CONVS = (
    aten.conv1d,
    aten.conv2d,
    aten.conv3d,
    aten.convolution,
    aten.conv_transpose1d,
    aten.conv_transpose2d,
    aten.conv_transpose3d,
)
_MATMULS = (aten.matmul, aten.mm, aten.bmm, aten.addmm, aten.baddbmm)


@dataclass(frozen=True)
class NodeStats:
    name: str
    op: str
    module: str
    macs: int
    params: int
    output_shape: tuple[int, ...] | None
    output_bytes: int


@dataclass(frozen=True)
class ModelStats:
    params: int
    buffers: int
    macs: int
    size_bytes: int
    size_by_dtype: dict[str, int]
    peak_activation_bytes: int
    nodes: tuple[NodeStats, ...] = field(repr=False)

    def to_dict(self, *, with_nodes: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not with_nodes:
            data.pop("nodes")
        return data


def analyze(gm: GraphModule) -> ModelStats:
    """Params, MACs, size and peak activation memory of ``gm``, in total and per node."""
    node_stats = tuple(_node_stats(gm, n) for n in gm.graph.nodes if n.op == "call_function")
    stored_quantized = _quantized_weight_elements(gm)
    params = sum(p.numel() for p in gm.parameters()) + stored_quantized
    buffers = sum(b.numel() for b in gm.buffers()) - stored_quantized
    size_by_dtype: dict[str, int] = defaultdict(int)
    for tensor in [*gm.parameters(), *gm.buffers()]:
        size_by_dtype[str(tensor.dtype).removeprefix("torch.")] += (
            tensor.numel() * tensor.element_size()
        )
    return ModelStats(
        params=params,
        buffers=buffers,
        macs=sum(s.macs for s in node_stats),
        size_bytes=sum(size_by_dtype.values()),
        size_by_dtype=dict(size_by_dtype),
        peak_activation_bytes=_peak_activation_bytes(gm),
        nodes=node_stats,
    )


def _quantized_weight_elements(gm: GraphModule) -> int:
    """Elements of integer buffers read by a dequantize op: weights stored quantized.

    They are buffers (gradients cannot reach integers) but they are the model's weights, so
    they count as parameters; their bytes count at their integer width in ``size_by_dtype``.
    """
    total = 0
    for node in gm.graph.nodes:
        tensor = get_tensor(gm, node)
        if tensor is None or tensor.is_floating_point():
            continue
        if any(
            str(u.target).startswith("quantized_decomposed.dequantize") and u.args[0] is node
            for u in node.users
        ):
            total += tensor.numel()
    return total


def _per_sample(dim: int | torch.SymInt) -> int:
    if isinstance(dim, torch.SymInt):
        return _at_batch_one(dim.node.expr)
    return int(dim)


@functools.lru_cache(maxsize=4096)
def _at_batch_one(expr: object) -> int:
    """A symbolic size with every symbol at 1; cached, as sympy's ``subs`` is slow and a
    graph has few distinct size expressions (``s0``, ``2*s0``, …) on many nodes."""
    return int(expr.subs({s: 1 for s in expr.free_symbols}))


def _shape(value: object) -> tuple[int, ...] | None:
    if isinstance(value, torch.Tensor):
        return tuple(_per_sample(d) for d in value.shape)
    return None


def _tensor_bytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return math.prod(_shape(value) or ()) * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _arg_shape(node: object) -> tuple[int, ...] | None:
    return _shape(node.meta.get("val")) if isinstance(node, Node) else None


def _macs(node: Node) -> int:
    out = _shape(node.meta.get("val"))
    if out is None:
        return 0
    if is_op(node, _CONVS):
        weight = _arg_shape(node.args[1])
        if weight is None:
            return 0
        transposed = is_op(node, _CONVS[4:]) or (
            node.target is aten.convolution.default and bool(node.args[6])
        )
        if transposed:  # every input element meets every (out/groups) filter tap
            inp = _arg_shape(node.args[0]) or ()
            return math.prod(inp) * math.prod(weight[1:])
        return math.prod(out) * math.prod(weight[1:])
    if is_op(node, (aten.linear,)):
        weight = _arg_shape(node.args[1])
        return math.prod(out) * weight[1] if weight else 0
    if is_op(node, _MATMULS):
        with_bias = is_op(node, (aten.addmm, aten.baddbmm))
        lhs = _arg_shape(node.args[1] if with_bias else node.args[0])
        return math.prod(out) * lhs[-1] if lhs else 0
    if is_op(node, (aten.scaled_dot_product_attention,)):
        q, k, v = (_arg_shape(a) for a in node.args[:3])
        if not (q and k and v):
            return 0
        batch_heads = math.prod(q[:-2])
        return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])
    return 0


def _node_stats(gm: GraphModule, node: Node) -> NodeStats:
    params = sum(t.numel() for a in node.all_input_nodes if (t := get_tensor(gm, a)) is not None)
    val = node.meta.get("val")
    return NodeStats(
        name=node.name,
        op=str(getattr(node.target, "__name__", node.target)),
        module=module_path(node),
        macs=_macs(node),
        params=params,
        output_shape=_shape(val),
        output_bytes=_tensor_bytes(val),
    )


def _peak_activation_bytes(gm: GraphModule) -> int:
    """Simulate allocation in graph order: alive from creation to the last use of its storage."""
    nodes = [n for n in gm.graph.nodes if n.op in ("placeholder", "call_function")]
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    owner: dict[Node, Node] = {}
    for node in nodes:
        base = node.args[0] if node.args else None
        if (
            node.op == "call_function"
            and (is_op(node, VIEW_OPS) or node.target.__name__ == "getitem")
            and isinstance(base, Node)
            and base in owner
        ):
            owner[node] = owner[base]
        else:
            owner[node] = node
    last_use: dict[Node, int] = {}
    for node in nodes:
        end = max((order[u] for u in node.users), default=order[node])
        storage = owner[node]
        last_use[storage] = max(last_use.get(storage, 0), end)
    live, peak = 0, 0
    frees: dict[int, int] = defaultdict(int)
    for node in gm.graph.nodes:
        if node in owner and owner[node] is node:
            size = _tensor_bytes(node.meta.get("val"))
            live += size
            frees[last_use[node]] += size
        peak = max(peak, live)
        live -= frees.pop(order[node], 0)
    return peak
