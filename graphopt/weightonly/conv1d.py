"""HF ``Conv1D`` layers (GPT-2's) as ``aten.linear``, so weight-only quantization takes them.

GPT-2's ``Conv1D`` stores its weight as ``[in, out]`` and computes ``addmm(bias, x, W)``;
everything downstream of the weight-only pass — the block layout ``[N, K]`` cut along the
input features, ``find_quantized``, the ONNX rewrite to ``MatMulNBits`` — speaks
``aten.linear``'s ``[out, in]``. ``addmm(b, x, W)`` is ``linear(x, Wᵀ, b)`` (the same sums,
up to float rounding of the BLAS call's layout), so the layer is rewritten to that form with
the weight transposed into a new tensor under the same name: the user's tensor is never
written, and the dequantized weight the pass then builds is what ``MatMulNBits`` reads.

Only a plain ``addmm`` qualifies: beta and alpha 1, a 2-d float weight read by this node
alone (a tied or shared weight stays, and is refused by the pass with the reason), and not in
the pass's ``skip``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor, iter_ops, module_path, set_tensor

__all__ = ["linearize_conv1d"]

aten = torch.ops.aten


def linearize_conv1d(gm: GraphModule, skip: Sequence[str] = ()) -> list[str]:
    """Rewrite every eligible ``addmm`` with a weight operand to ``aten.linear``; returns the
    layers rewritten (module paths, else node names)."""
    nodes = list(iter_ops(gm, (aten.addmm,)))
    reads = Counter(str(n.target) for n in gm.graph.nodes if n.op == "get_attr")
    done = []
    for node in nodes:
        if len(node.args) != 3 or any(node.kwargs.get(k, 1) != 1 for k in ("beta", "alpha")):
            continue
        bias, x, weight_node = node.args
        weight = get_tensor(gm, weight_node)
        path = module_path(node)
        if weight is None or weight.dim() != 2 or not weight.is_floating_point():
            continue
        if len(weight_node.users) > 1 or reads[str(weight_node.target)] > 1:
            continue  # shared: the pass refuses it with the reason
        if any(path == s or path.startswith(s + ".") for s in skip):
            continue
        is_parameter = isinstance(weight, torch.nn.Parameter)
        set_tensor(
            gm,
            str(weight_node.target),
            weight.detach().t().contiguous(),
            parameter=is_parameter,
            copy=False,
        )
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, (x, weight_node, bias))
        linear.meta = dict(node.meta)
        _transpose_meta(weight_node)
        node.replace_all_uses_with(linear)
        gm.graph.erase_node(node)
        done.append(path or linear.name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done


def _transpose_meta(weight_node: Node) -> None:
    """The get_attr's recorded value now has the transposed shape."""
    val = weight_node.meta.get("val")
    if isinstance(val, torch.Tensor):
        weight_node.meta["val"] = val.t().contiguous() if val.dim() == 2 else val
