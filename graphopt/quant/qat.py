"""Quantization-aware training: the QDQ graph as a trainable module and back.

The deployable form (``rewrite.py``) stores weights as int8 buffers, which gradients cannot
reach. ``to_trainable`` rewrites it to fake quantization with a straight-through estimator:

- ``dequantize_per_channel(W_int8, s, z)`` → ``fake_quantize_per_channel_affine(W, s, z)``
  where ``W = s · W_int8`` becomes a float ``nn.Parameter`` (rounded in the forward pass,
  identity gradient inside the range);
- ``dequantize_per_tensor(quantize_per_tensor(x))`` → ``fake_quantize_per_tensor_affine(x)``.

The forward pass computes the same values as the QDQ form. Scales and zero points stay fixed
(calibrated once; they are not learned). ``to_deployable`` rounds the trained float weights
back to int8 with the same scales and restores the QDQ pairs, so the result exports to ONNX
Runtime's int8 kernels again. The fake-quant ops themselves do not export (no meta kernel in
torch.export for the mask variant), which is why the two forms exist.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import drop_unused_attribute, fresh_attribute_name, get_tensor, set_tensor
from graphopt.quant.rewrite import QUANT_META, QuantOps

__all__ = ["is_quantized", "to_deployable", "to_trainable"]

aten = torch.ops.aten
_FAKE_CHANNEL = aten.fake_quantize_per_channel_affine.default
_FAKE_TENSOR = aten.fake_quantize_per_tensor_affine.default


def is_quantized(gm: torch.nn.Module) -> bool:
    """True when ``gm`` is a graph with QDQ or fake-quant nodes."""
    if not isinstance(gm, GraphModule):
        return False
    targets = (QuantOps.q, QuantOps.dq, QuantOps.dq_channel, _FAKE_CHANNEL, _FAKE_TENSOR)
    return any(n.op == "call_function" and n.target in targets for n in gm.graph.nodes)


def to_trainable(gm: GraphModule) -> GraphModule:
    """A fake-quantized copy of a QDQ graph whose weights are trainable parameters."""
    out = _copy(gm)
    graph = out.graph
    for node in list(graph.nodes):
        if node.target is QuantOps.dq_channel:
            q_node, scale_node, zp_node, axis, qmin, qmax, _dtype = node.args
            q, scales, zero_points = (get_tensor(out, n) for n in (q_node, scale_node, zp_node))
            if q is None or scales is None or zero_points is None:
                continue
            shape = [-1 if d == axis else 1 for d in range(q.dim())]
            weight = (q.float() - zero_points.view(shape).float()) * scales.view(shape)
            weight_name = fresh_attribute_name(out, str(q_node.target).removesuffix("_int8"))
            zp_name = fresh_attribute_name(out, f"{zp_node.target}_int32")
            set_tensor(out, weight_name, weight, parameter=True)
            set_tensor(out, zp_name, zero_points.to(torch.int32), parameter=False)
            with graph.inserting_before(node):
                w, zp = graph.get_attr(weight_name), graph.get_attr(zp_name)
                fake = graph.call_function(_FAKE_CHANNEL, (w, scale_node, zp, axis, qmin, qmax))
            _replace(graph, node, fake)
            for leftover in (q_node, zp_node):
                drop_unused_attribute(out, leftover)
        elif node.target is QuantOps.dq and _is_q(node.args[0]):
            quant = node.args[0]
            source, scale, zero_point, qmin, qmax, _dtype = quant.args
            with graph.inserting_before(node):
                fake = graph.call_function(_FAKE_TENSOR, (source, scale, zero_point, qmin, qmax))
            _replace(graph, node, fake)
            graph.erase_node(quant)
    graph.lint()
    out.recompile()
    for param in out.parameters():
        param.requires_grad_(True)
    return out


def to_deployable(gm: GraphModule) -> GraphModule:
    """The QDQ form of a fake-quantized graph: weights rounded to int8 with their scales."""
    out = _copy(gm)
    graph = out.graph
    for node in list(graph.nodes):
        if node.target is _FAKE_CHANNEL:
            w_node, scale_node, zp_node, axis, qmin, qmax = node.args
            weight, scales, zero_points = (
                get_tensor(out, n) for n in (w_node, scale_node, zp_node)
            )
            if weight is None or scales is None or zero_points is None:
                continue
            shape = [-1 if d == axis else 1 for d in range(weight.dim())]
            steps = torch.round(weight.detach() / scales.view(shape)) + zero_points.view(shape)
            q = torch.clamp(steps, qmin, qmax).to(torch.int8)  # the range it trained in
            q_name = fresh_attribute_name(out, f"{w_node.target}_int8")
            zp_name = fresh_attribute_name(out, f"{scale_node.target}_zero_point")
            set_tensor(out, q_name, q, parameter=False)
            set_tensor(out, zp_name, zero_points.to(torch.int64), parameter=False)
            with graph.inserting_before(node):
                args = (graph.get_attr(q_name), scale_node, graph.get_attr(zp_name))
                dequant = graph.call_function(
                    QuantOps.dq_channel, (*args, axis, qmin, qmax, torch.int8)
                )
            _replace(graph, node, dequant, meta="weight")
            for leftover in (w_node, zp_node):
                drop_unused_attribute(out, leftover)
        elif node.target is _FAKE_TENSOR:
            source, scale, zero_point, qmin, qmax = node.args
            dtype = torch.uint8 if qmin == 0 else torch.int8
            args = (scale, zero_point, qmin, qmax, dtype)
            with graph.inserting_before(node):
                quant = graph.call_function(QuantOps.q, (source, *args))
                dequant = graph.call_function(QuantOps.dq, (quant, *args))
            quant.meta[QUANT_META] = "activation"
            _replace(graph, node, dequant, meta="activation")
    graph.lint()
    out.recompile()
    return out


def _copy(gm: GraphModule) -> GraphModule:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return copy.deepcopy(gm)


def _is_q(node: object) -> bool:
    return isinstance(node, Node) and node.target is QuantOps.q and len(node.users) == 1


def _replace(graph: torch.fx.Graph, old: Node, new: Node, meta: str | None = None) -> None:
    new.meta = {k: v for k, v in old.meta.items() if k != QUANT_META}
    new.meta[QUANT_META] = meta or old.meta.get(QUANT_META, "")
    old.replace_all_uses_with(new)
    graph.erase_node(old)
