"""A fast stand-in of a QDQ graph for the quantize pass's own measurements.

The pass scores its result (output cosine and top-1 agreement with the float graph), and
``mixed`` precision and the sensitivity table score many candidates. Run as it is, a QDQ graph
spends most of that time in ``quantized_decomposed``'s Python-level kernels: every
activation's quantize (scale, round, add, clamp, cast) and dequantize (cast, subtract,
scale), and every weight's per-channel dequantize on every forward. Measured on ResNet-50 (32
images at 224², CPU time under cProfile): the int8 probe took 25.0 s against 8.7 s for the
float graph; with this, the pass's two probe runs went from 33.7 to 23.7 s and the whole pass
(64 calibration images) from 58.8 to 50.3 s, with outputs bit-identical to the QDQ graph's
on ResNet-50, MobileNetV2 and the zoo transformer (``tests/quant/test_simulate.py``).

``fast_simulation`` returns a copy (sharing the graph's tensors) where each
``dequantize_per_tensor(quantize_per_tensor(x))`` pair is one
``torch.fake_quantize_per_tensor_affine`` (a single fused kernel computing the same
``(clamp(round(x / s) + z, qmin, qmax) − z) · s``, round half to even in both) and each
constant int8 weight's dequantize is done once, up front. Only the scoring uses it: the graph
the pass returns, which ONNX Runtime and TVM run, is the QDQ graph itself.
"""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor, is_op

__all__ = ["fast_simulation"]

_decomposed = torch.ops.quantized_decomposed


def fast_simulation(gm: GraphModule) -> GraphModule:
    """``gm`` with fused fake quantization and pre-dequantized weights (same values)."""
    graph = copy.deepcopy(gm.graph)
    module = GraphModule(gm, graph)
    for index, node in enumerate(list(graph.nodes)):
        if is_op(node, [_decomposed.dequantize_per_tensor]):
            _fuse_pair(graph, node)
        elif is_op(node, [_decomposed.dequantize_per_channel]):
            _predequantize(module, node, f"_graphopt_simulated_weight_{index}")
    for node in reversed(list(graph.nodes)):
        dead = not node.users and node.op in ("call_function", "get_attr")
        if dead and (node.op == "get_attr" or is_op(node, [_decomposed.quantize_per_tensor])):
            graph.erase_node(node)
    module.recompile()
    return module


def _fuse_pair(graph: torch.fx.Graph, dequant: Node) -> None:
    quant = dequant.args[0]
    if not isinstance(quant, Node) or not is_op(quant, [_decomposed.quantize_per_tensor]):
        return
    if tuple(quant.args[1:5]) != tuple(dequant.args[1:5]) or dequant.kwargs.get("out_dtype"):
        return  # not a plain round trip: keep it as it is
    scale, zero_point, qmin, qmax = quant.args[1:5]
    if isinstance(scale, Node) or isinstance(zero_point, Node):
        return
    with graph.inserting_before(dequant):
        fused = graph.call_function(
            torch.fake_quantize_per_tensor_affine,
            (quant.args[0], float(scale), int(zero_point), int(qmin), int(qmax)),
        )
    fused.meta = dict(dequant.meta)
    dequant.replace_all_uses_with(fused)
    graph.erase_node(dequant)


def _predequantize(module: GraphModule, dequant: Node, name: str) -> None:
    values = [get_tensor(module, a) if isinstance(a, Node) else a for a in dequant.args]
    if any(v is None for v in values[:3]):
        return  # an input computed at run time: nothing to precompute
    with torch.no_grad():
        weight = dequant.target(*values, **dequant.kwargs)
    module.register_buffer(name, weight)
    with module.graph.inserting_before(dequant):
        constant = module.graph.get_attr(name)
    constant.meta = dict(dequant.meta)
    dequant.replace_all_uses_with(constant)
    module.graph.erase_node(dequant)
