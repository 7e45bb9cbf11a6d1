"""How a weight-only quantized linear lives in the FX graph, and how it is found again.

The layer's weight becomes its dequantization, computed in the graph from three buffers:

    codes   uint8  [N, n_blocks, B]   <weight>_q<bits>_codes  (one code per byte)
    scales  float  [N, n_blocks, 1]   <weight>_q<bits>_scales
    zeros   uint8  [N, n_blocks, 1]   <weight>_q<bits>_zeros  (asymmetric only)

    weight = reshape((float(codes) − float(zeros) | 2^(bits−1)) · scales, [N, K_pad])[:, :K]

Why in the graph and not a float copy beside the codes: torch (eager, ``.pt2``, the pass
manager's checks) then runs exactly the quantized model; the codes are the only truth, so a
later pass cannot change the float weight behind the codes' back — passes that rewrite a
weight parameter (``prune``, ``quantize``, ``low_rank``, ``cluster``) refuse such a layer,
"weight is computed by other nodes"; and the structure survives a ``.pt2`` round trip, where
``gm.meta`` does not. ``find_quantized`` recognises it by that structure (``gm.meta`` adds
what the graph cannot say: the method and the accuracy level). The ONNX export keeps the uint8
codes as an initializer behind ``Cast → Sub → Mul → Reshape``, which
``graphopt.backends.onnx_nbits`` replaces by ``com.microsoft.MatMulNBits``; the float weight
never exists in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from graphopt.ir import (
    drop_unused_attribute,
    fresh_attribute_name,
    get_tensor,
    is_op,
    iter_ops,
    module_path,
    set_tensor,
)
from graphopt.weightonly.blocks import BlockQuant, dequantize

__all__ = ["WEIGHT_ONLY_META", "QuantizedLinear", "find_quantized", "write_quantized"]

aten = torch.ops.aten
WEIGHT_ONLY_META = "graphopt_weight_only"  # gm.meta: weight target → {method, accuracy_level…}
_CASTS = (aten._to_copy, aten.to)
_RESHAPES = (aten.reshape, aten.view, aten._unsafe_view)


@dataclass(frozen=True)
class QuantizedLinear:
    """One quantized ``aten.linear``: the node, its module path, the tensors and their names."""

    node: Node
    path: str
    quant: BlockQuant
    codes: str
    scales: str
    zeros: str | None
    info: dict[str, Any]

    @property
    def where(self) -> str:
        return self.path or self.node.name

    def weight(self) -> Tensor:
        return dequantize(self.quant)


def write_quantized(
    gm: GraphModule, layer: Node, quant: BlockQuant, info: dict[str, Any]
) -> dict[str, str]:
    """Make ``layer``'s weight the dequantization of ``quant``; drop the float weight.

    ``info`` (JSON-able: method, accuracy level…) is kept in ``gm.meta[WEIGHT_ONLY_META]``.
    Returns the names of the buffers written.
    """
    weight_node = layer.args[1]
    target = str(weight_node.target)
    n, k = get_tensor(gm, weight_node).shape
    stem = f"{target}_q{quant.bits}"
    names = {"codes": fresh_attribute_name(gm, f"{stem}_codes")}
    set_tensor(gm, names["codes"], quant.codes, parameter=False)
    names["scales"] = fresh_attribute_name(gm, f"{stem}_scales")
    set_tensor(gm, names["scales"], quant.scales, parameter=False)
    if quant.zeros is not None:
        names["zeros"] = fresh_attribute_name(gm, f"{stem}_zeros")
        set_tensor(gm, names["zeros"], quant.zeros, parameter=False)
    graph = gm.graph
    with graph.inserting_before(layer):
        codes = _as_float(graph, graph.get_attr(names["codes"]))
        zero: Node | float = (
            _as_float(graph, graph.get_attr(names["zeros"]))
            if quant.zeros is not None
            else float(2 ** (quant.bits - 1))
        )
        centred = graph.call_function(aten.sub.Tensor, (codes, zero))
        scaled = graph.call_function(aten.mul.Tensor, (centred, graph.get_attr(names["scales"])))
        weight = graph.call_function(aten.reshape.default, (scaled, [n, -1]))
        if quant.codes.shape[1] * quant.block_size != k:  # K padded to whole blocks
            weight = graph.call_function(aten.slice.Tensor, (weight, 1, 0, k))
    weight.meta[WEIGHT_ONLY_META] = target
    layer.replace_input_with(weight_node, weight)
    drop_unused_attribute(gm, weight_node)
    gm.meta.setdefault(WEIGHT_ONLY_META, {})[names["codes"]] = dict(info)
    return names


def find_quantized(gm: torch.nn.Module) -> list[QuantizedLinear]:
    """Every ``aten.linear`` whose weight is the dequantization chain above, in graph order.

    Works on a graph loaded from ``.pt2`` too (structure, not ``meta``). Without the meta
    entry, bits are read from the codes (all ≤ 15: 4 bits, else 8) and the midpoint.
    """
    if not isinstance(gm, GraphModule):
        return []
    meta = gm.meta.get(WEIGHT_ONLY_META, {}) if isinstance(gm.meta, dict) else {}
    found = []
    for layer in iter_ops(gm, (aten.linear,)):
        match = _match_chain(gm, layer.args[1] if len(layer.args) > 1 else None)
        if match is None:
            continue
        codes_name, scales_name, zeros_name, midpoint, k = match
        codes = get_tensor(gm, _attr(gm, codes_name))
        scales = get_tensor(gm, _attr(gm, scales_name))
        zeros = get_tensor(gm, _attr(gm, zeros_name)) if zeros_name else None
        info = dict(meta.get(codes_name, {}))
        bits = info.get("bits") or _bits(codes, zeros, midpoint)
        if bits is None:
            continue
        quant = BlockQuant(codes, scales.float(), zeros, int(bits), k)
        path = module_path(layer)
        found.append(QuantizedLinear(layer, path, quant, codes_name, scales_name, zeros_name, info))
    return found


def _as_float(graph: torch.fx.Graph, node: Node) -> Node:
    return graph.call_function(aten._to_copy.default, (node,), {"dtype": torch.float32})


def _match_chain(
    gm: GraphModule, node: object
) -> tuple[str, str, str | None, float | None, int] | None:
    """(codes, scales, zeros, midpoint, K) of a dequantization chain ending at ``node``."""
    if not isinstance(node, Node):
        return None
    k = None
    if is_op(node, (aten.slice,)):
        if len(node.args) < 4 or node.args[1] not in (1, -1) or node.args[2] not in (0, None):
            return None
        k, node = node.args[3], node.args[0]
    if not is_op(node, _RESHAPES) or not isinstance(node.args[0], Node):
        return None
    mul = node.args[0]
    if not is_op(mul, (aten.mul,)) or len(mul.args) != 2:
        return None
    scales_node = next((a for a in mul.args if _is_tensor(gm, a, float_=True, dims=3)), None)
    sub = next((a for a in mul.args if a is not scales_node), None)
    if scales_node is None or not isinstance(sub, Node) or not is_op(sub, (aten.sub,)):
        return None
    codes_node = _cast_source(gm, sub.args[0])
    if codes_node is None:
        return None
    codes = get_tensor(gm, codes_node)
    zero = sub.args[1]
    zeros_node, midpoint = None, None
    if isinstance(zero, (int, float)):
        midpoint = float(zero)
    else:
        zeros_node = _cast_source(gm, zero)
        if zeros_node is None:
            return None
    full = int(codes.shape[1] * codes.shape[2])
    k = full if k is None else int(k)
    if not 0 < k <= full:
        return None
    zeros_name = str(zeros_node.target) if zeros_node is not None else None
    return str(codes_node.target), str(scales_node.target), zeros_name, midpoint, k


def _cast_source(gm: GraphModule, node: object) -> Node | None:
    """The uint8 3-d ``get_attr`` behind a cast to float."""
    if not isinstance(node, Node) or not is_op(node, _CASTS) or not node.args:
        return None
    source = node.args[0]
    return source if _is_tensor(gm, source, float_=False, dims=3) else None


def _is_tensor(gm: GraphModule, node: object, *, float_: bool, dims: int) -> bool:
    tensor = get_tensor(gm, node) if isinstance(node, Node) else None
    if tensor is None or tensor.dim() != dims:
        return False
    return tensor.is_floating_point() if float_ else tensor.dtype == torch.uint8


def _attr(gm: GraphModule, target: str) -> Node:
    return next(n for n in gm.graph.nodes if n.op == "get_attr" and n.target == target)


def _bits(codes: Tensor, zeros: Tensor | None, midpoint: float | None) -> int | None:
    if midpoint is not None:
        return {8.0: 4, 128.0: 8}.get(midpoint)
    top = max(int(codes.max()), int(zeros.max()) if zeros is not None else 0)
    return 4 if top <= 15 else 8
