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
``dequantize_per_tensor(quantize_per_tensor(x))`` pair is one :func:`round_trip`: the same
``(clamp(round(x · (1/s)) + z, qmin, qmax) − z) · s`` with the same float32 operations in the
same order, round half to even, written into one buffer in place. Why not
``torch.fake_quantize_per_tensor_affine``, the fused kernel this used before: measured on an
8×256×56×56 activation at 2 threads it takes 15.9 ms where the in-place chain takes 4.1 ms
(the float ``relu`` of that tensor, the memory-bound floor, 1.4 ms). Per-channel weight
dequantizes stay in the graph, run on every forward: they cost ~1 ms per weight against
~30 ms of convolution per batch on ResNet-50, and computing them up front held a float copy
of every weight during scoring (the pipeline's peak memory, ``benchmarks/memory.py``). Only
the scoring uses this: the graph the pass returns, which ONNX Runtime and TVM run, is the QDQ
graph itself.
"""

from __future__ import annotations

import copy

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import is_op

__all__ = ["fast_simulation", "round_trip"]

_decomposed = torch.ops.quantized_decomposed


def fast_simulation(gm: GraphModule) -> GraphModule:
    """``gm`` with each activation's quantize–dequantize pair as one :func:`round_trip`."""
    graph = copy.deepcopy(gm.graph)
    module = GraphModule(gm, graph)
    for node in list(graph.nodes):
        if is_op(node, [_decomposed.dequantize_per_tensor]):
            _fuse_pair(graph, node)
    for node in reversed(list(graph.nodes)):
        if not node.users and is_op(node, [_decomposed.quantize_per_tensor]):
            graph.erase_node(node)
    module.recompile()
    return module


def round_trip(
    x: torch.Tensor, scale: float, zero_point: int, quant_min: int, quant_max: int
) -> torch.Tensor:
    """``dequantize_per_tensor(quantize_per_tensor(x))`` of ``quantized_decomposed``, bit for
    bit on finite ``x``: the same float32 operations, in place in one new buffer."""
    out = torch.mul(x.float(), 1.0 / scale)  # quantize: round(x · inv_scale) + z, clamped
    out.round_().add_(zero_point).clamp_(quant_min, quant_max)
    return out.sub_(zero_point).mul_(scale)  # dequantize: (q − z) · s


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
            round_trip, (quant.args[0], float(scale), int(zero_point), int(qmin), int(qmax))
        )
    fused.meta = dict(dequant.meta)
    dequant.replace_all_uses_with(fused)
    graph.erase_node(dequant)
