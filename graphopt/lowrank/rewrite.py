"""FX surgery: replace one ``aten.linear`` / ``aten.conv2d`` node by a chain of factor layers.

The new weights become parameters named after the layer's (``layer1.0.conv1.core.weight``),
read by new ``get_attr`` nodes; the chain's nodes carry the original node's
``nn_module_stack`` (so reports still name the layer) and a ``graphopt_low_rank`` marker
(so a second run of the pass leaves factor layers alone). The old weight and bias are deleted
once nothing reads them. Recompiling and shape propagation are the pass manager's job.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from graphopt.ir import fresh_attribute_name, get_tensor, set_tensor
from graphopt.lowrank.layers import Layer, Stage

__all__ = ["LOW_RANK_META", "replace_layer"]

aten = torch.ops.aten
LOW_RANK_META = "graphopt_low_rank"


def replace_layer(
    gm: GraphModule,
    layer: Layer,
    stages: Sequence[Stage],
    weights: Sequence[Tensor],
    bias: Tensor | None,
    *,
    method: str,
) -> list[Node]:
    """Put ``stages`` (with ``weights``; ``bias`` or the layer's own on the last) in its place.

    Returns the new op nodes in order.
    """
    if len(stages) != len(weights):
        raise ValueError(f"{len(stages)} stages but {len(weights)} weights")
    node = layer.node
    graph = gm.graph
    old_attrs = [a for a in node.all_input_nodes if a.op == "get_attr"]
    owner = str(old_attrs[0].target).rpartition(".")[0] if old_attrs else layer.path
    last_bias = bias if bias is not None else layer.bias
    current = node.args[0]
    created = []
    with graph.inserting_before(node):
        for i, (stage, weight) in enumerate(zip(stages, weights, strict=True)):
            if tuple(weight.shape) != stage.weight_shape:
                raise ValueError(
                    f"{stage.name}: weight shape {tuple(weight.shape)} != {stage.weight_shape}"
                )
            weight_node = _new_param(gm, owner, stage.name, "weight", weight)
            bias_node = None
            if stage.bias and i == len(stages) - 1 and last_bias is not None:
                bias_node = _new_param(gm, owner, stage.name, "bias", last_bias)
            current = _call(graph, stage, current, weight_node, bias_node)
            current.meta["nn_module_stack"] = copy.copy(node.meta.get("nn_module_stack", {}))
            current.meta[LOW_RANK_META] = {"method": method, "stage": stage.name}
            created.append(current)
    node.replace_all_uses_with(current)
    graph.erase_node(node)
    for attr in old_attrs:
        _drop_attribute(gm, attr)
    return created


def _new_param(gm: GraphModule, owner: str, stage: str, leaf: str, value: Tensor) -> Node:
    target = fresh_attribute_name(gm, f"{owner}.{stage}.{leaf}" if owner else f"{stage}.{leaf}")
    set_tensor(gm, target, value, parameter=True)
    return gm.graph.get_attr(target)


def _call(graph, stage: Stage, x: Node, weight: Node, bias: Node | None) -> Node:
    if stage.op == "linear":
        return graph.call_function(aten.linear.default, (x, weight, bias))
    args = (x, weight, bias, list(stage.stride), list(stage.padding), list(stage.dilation))
    return graph.call_function(aten.conv2d.default, (*args, stage.groups))


def _drop_attribute(gm: GraphModule, attr: Node) -> None:
    """Erase a user-less ``get_attr`` node and its tensor unless another node still reads it."""
    if attr.users:
        return
    tensor, target = get_tensor(gm, attr), str(attr.target)
    gm.graph.erase_node(attr)
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if tensor is not None and hasattr(owner, leaf):
        delattr(owner, leaf)
