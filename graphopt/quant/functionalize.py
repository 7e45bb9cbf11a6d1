"""Replace in-place ops (``aten.relu_``, ``hardtanh_``, ``add_``…) with their functional twins.

``torch.export``'s module graph keeps ``nn.ReLU(inplace=True)`` as ``aten.relu_``: the op
writes into its input, and every later reader of that input sees the new values. Inserting a
quantize/dequantize pair after a tensor that something mutates later would observe the wrong
values, so the quantizer first makes the graph functional: ``y = relu_(x)`` becomes
``y = relu(x)`` and every reader of ``x`` that runs after it reads ``y`` instead. This is
exact as long as ``x`` is not a view of another live tensor (an activation fed by a reshape
that is read again later); such ops are left in place and counted.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import VIEW_OPS, is_op

__all__ = ["functionalize_inplace"]


def functionalize_inplace(gm: GraphModule) -> tuple[int, int]:
    """Rewrite in-place ATen ops to functional ones; returns ``(rewritten, left in place)``."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    rewritten = kept = 0
    for node in list(gm.graph.nodes):
        functional = _functional_twin(node)
        if functional is None:
            continue
        base = node.args[0]
        if not isinstance(base, Node) or is_op(base, VIEW_OPS):
            kept += 1
            continue
        with gm.graph.inserting_after(node):
            new = gm.graph.call_function(functional, node.args, node.kwargs)
        new.meta = dict(node.meta)
        later_readers = [u for u in base.users if u in order and order[u] > order[node]]
        for user in later_readers:
            user.replace_input_with(base, new)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        rewritten += 1
    return rewritten, kept


def _functional_twin(node: Node) -> torch._ops.OpOverload | None:
    target = node.target
    if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
        return None
    schema = target._schema
    if not schema.name.startswith("aten::") or not schema.name.endswith("_"):
        return None
    if not (schema.arguments and schema.arguments[0].alias_info is not None):
        return None
    packet = getattr(torch.ops.aten, schema.name.removeprefix("aten::")[:-1], None)
    if packet is None:
        return None
    return getattr(packet, target._overloadname, None)
