"""Write quantization into the graph: int8 weights and activation quantize/dequantize pairs.

The result is the deployable QDQ form, as ``torch.ao``'s PT2E ``convert`` writes it and as
the ONNX exporter maps it one-to-one onto ``QuantizeLinear``/``DequantizeLinear``:

- weight: an int8 buffer ``<weight>_int8`` with per-channel ``scale`` and ``zero_point``
  buffers → ``quantized_decomposed.dequantize_per_channel`` → the conv/linear;
- activation ``x``: ``quantize_per_tensor(x) → dequantize_per_tensor`` inserted right after
  the node that produces ``x``; readers take the dequantized value, except the float readers
  (layers kept in float, graph outputs).

The torch module computes exactly what an int8 runtime computes up to float rounding of the
accumulation, so its outputs are the reference for the ONNX Runtime check. Every inserted node
carries ``meta["graphopt_quant"]`` (``"weight"`` or ``"activation"``) for ``qat.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops
from torch.fx import GraphModule, Node

from graphopt.errors import NumericsError
from graphopt.ir import drop_unused_attribute, fresh_attribute_name, get_tensor, set_tensor
from graphopt.quant.calibrate import STAGE
from graphopt.quant.placement import QuantLayer, Sites
from graphopt.quant.qparams import WEIGHT_QMAX, ActivationQParams, quantize_weight

__all__ = ["QUANT_META", "QuantOps", "insert_activation_qdq", "quantize_weights"]

QUANT_META = "graphopt_quant"


class QuantOps:
    """The ``quantized_decomposed`` overloads the QDQ form uses."""

    q = torch.ops.quantized_decomposed.quantize_per_tensor.default
    dq = torch.ops.quantized_decomposed.dequantize_per_tensor.default
    dq_channel = torch.ops.quantized_decomposed.dequantize_per_channel.default


def quantize_weights(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    input_scales: Mapping[str, float] | None = None,
    *,
    qmax: int = WEIGHT_QMAX,
) -> int:
    """Store each layer's weight as int8 (per output channel, over [−qmax, qmax]) behind a
    dequantize node.

    ``input_scales`` (layer node → its input's activation scale) lets the weight scales keep
    the layer's bias within ORT's int32 bias (see ``quantize_weight``). A weight that several
    layers read (ALBERT applies one layer to every depth) is stored once, behind one dequantize
    node that all of them read, with the smallest of their input scales (the one whose bias
    needs the most room): one int8 copy per use would multiply the parameters instead.
    Returns the number of layers that now read an int8 weight.
    """
    input_scales = input_scales or {}
    nodes = {n.name: n for n in gm.graph.nodes}
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    shared: dict[int, list[tuple[QuantLayer, Node]]] = {}
    for layer in layers:
        node = nodes[layer.node]
        weight = get_tensor(gm, node.args[1])
        if weight is not None:
            shared.setdefault(id(weight), []).append((layer, node))
    done = 0
    for users in shared.values():
        users.sort(key=lambda pair: order[pair[1]])
        done += _quantize_shared_weight(gm, users, input_scales, qmax)
    return done


def _quantize_shared_weight(
    gm: GraphModule,
    users: Sequence[tuple[QuantLayer, Node]],
    input_scales: Mapping[str, float],
    qmax: int,
) -> int:
    """One weight tensor (read by ``users``, in graph order) as int8 behind one dequantize."""
    layer, first = users[0]
    weight_nodes = [node.args[1] for _, node in users]
    weight = get_tensor(gm, weight_nodes[0])
    if not bool(torch.isfinite(weight).all()):
        raise NumericsError(
            STAGE,
            f"the weight {layer.weight} of node {layer.node} holds NaN or inf, so its "
            "int8 scales would be non-finite; the stage before produced it",
        )
    bias_node = first.args[2] if len(first.args) > 2 else first.kwargs.get("bias")
    known = [input_scales[lay.node] for lay, _ in users if lay.node in input_scales]
    q, scales, zero_points = quantize_weight(
        weight,
        axis=0,
        bias=get_tensor(gm, bias_node),
        input_scale=min(known, default=None),
        qmax=qmax,
    )
    names = {}
    for suffix, value in (("int8", q), ("scale", scales), ("zero_point", zero_points)):
        names[suffix] = fresh_attribute_name(gm, f"{layer.weight}_{suffix}")
        set_tensor(gm, names[suffix], value, parameter=False)
    with gm.graph.inserting_before(first):
        args = [gm.graph.get_attr(names[s]) for s in ("int8", "scale", "zero_point")]
        dequant = gm.graph.call_function(
            QuantOps.dq_channel,
            (*args, 0, -qmax, qmax, torch.int8),
        )
    dequant.meta[QUANT_META] = "weight"
    for (_, node), weight_node in zip(users, weight_nodes, strict=True):
        node.replace_input_with(weight_node, dequant)
    for weight_node in dict.fromkeys(weight_nodes):
        drop_unused_attribute(gm, weight_node)
    return len(users)


def insert_activation_qdq(
    gm: GraphModule, sites: Sites, qparams: Mapping[str, ActivationQParams]
) -> int:
    """A quantize/dequantize pair after every site tensor that a quantized reader reads."""
    nodes = {n.name: n for n in gm.graph.nodes}
    inserted = 0
    for name in sites.all:
        node = nodes[name]
        params = qparams[sites.shared.get(name, name)]
        readers = [u for u in node.users if u.name not in sites.float_readers]
        if not readers:
            continue
        with gm.graph.inserting_after(node):
            quant = gm.graph.call_function(QuantOps.q, (node, *params.args()))
        with gm.graph.inserting_after(quant):
            dequant = gm.graph.call_function(QuantOps.dq, (quant, *params.args()))
        for new in (quant, dequant):
            new.meta[QUANT_META] = "activation"
        for reader in readers:
            reader.replace_input_with(node, dequant)
        inserted += 1
    return inserted
