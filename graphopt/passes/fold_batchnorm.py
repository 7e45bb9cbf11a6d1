"""Fold inference-mode BatchNorm into the convolution or linear layer before it.

Maths. In eval mode BatchNorm is the per-channel affine map

    y_c = γ_c · (x_c − μ_c) / sqrt(σ²_c + ε) + β_c  =  s_c · x_c + (β_c − s_c · μ_c),
    s_c = γ_c / sqrt(σ²_c + ε).

When ``x = W ∗ u + b`` is a convolution (or a linear layer) whose output channel ``c`` is
produced by filter ``W_c``, the composition is again a convolution:

    W'_c = s_c · W_c,    b'_c = s_c · (b_c − μ_c) + β_c     (b = 0 when the layer had no bias).

This holds for grouped and depthwise convolutions too (each output channel still has its own
filter). For ``Linear`` + ``BatchNorm1d`` the BN channel is dimension 1, which is the linear
output feature only when the output is 2-D; other layouts are refused. The new weights are
computed in float64 and cast back, so the fold is exact up to one rounding.

Refused (recorded with a reason, never silent): a layer whose output has other users besides
the BN (folding would change them), weights that are not plain parameters or are shared, a BN
without running statistics (it always uses batch statistics), transposed convolutions.
A BN in training mode is an error: its output depends on the batch, so no fold is correct.
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch.fx import GraphModule, Node

from graphopt.errors import PassError
from graphopt.ir import (
    erase_unused_attributes,
    fresh_attribute_name,
    get_tensor,
    is_op,
    iter_ops,
    module_path,
    set_tensor,
)
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass

__all__ = ["FoldBatchNorm"]

aten = torch.ops.aten
_CONVS = (aten.conv1d, aten.conv2d, aten.conv3d)
_LINEAR = (aten.linear,)
_BN_TRAINING_ARG = 5
_BN_EPS_ARG = 7


@register_pass
class FoldBatchNorm(Pass):
    """Fold eval-mode BatchNorm into the preceding conv/linear layer (exact)."""

    name = "fold_batchnorm"
    exact = True

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        for bn in iter_ops(gm, [aten.batch_norm]):
            training = bn.args[_BN_TRAINING_ARG]
            has_stats = bn.args[3] is not None and bn.args[4] is not None
            if training and has_stats:
                where = module_path(bn) or bn.name
                raise PassError(
                    self.name,
                    f"BatchNorm at {where} is in training mode (it normalises with batch "
                    "statistics, so folding would change the model); call model.eval() "
                    "before graphopt.trace",
                )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        folded: list[dict[str, str]] = []
        refused: list[Refusal] = []
        for bn in iter_ops(gm, [aten.batch_norm]):
            producer = bn.args[0]
            reason = self._refusal_reason(gm, producer, bn)
            if reason is not None:
                refused.append(Refusal(node=module_path(bn) or bn.name, reason=reason))
                continue
            self._fold(gm, producer, bn)
            folded.append(
                {
                    "layer": module_path(producer) or producer.name,
                    "batchnorm": module_path(bn) or bn.name,
                }
            )
        return PassResult(
            gm,
            modified=bool(folded),
            stats={"folded": len(folded), "pairs": folded, "refused": [asdict(r) for r in refused]},
        )

    # ---- check -------------------------------------------------------------------------
    def _refusal_reason(self, gm: GraphModule, producer: object, bn: Node) -> str | None:
        if not isinstance(producer, Node) or not is_op(producer, _CONVS + _LINEAR):
            return "input is not a conv1d/2d/3d or linear output"
        if len(producer.users) != 1:
            return (
                f"{producer.name} has {len(producer.users)} users; folding would change the others"
            )
        if bn.args[3] is None or bn.args[4] is None:
            return "BatchNorm without running statistics always uses batch statistics"
        weight_node = producer.args[1]
        bias_node = producer.args[2] if len(producer.args) > 2 else None
        for node in (weight_node, bias_node):
            if node is not None and get_tensor(gm, node) is None:
                return f"{producer.name} has a weight/bias that is not a parameter"
            if node is not None and _attribute_shared(gm, node):
                return f"{producer.name} shares its weight/bias with another layer"
        if is_op(producer, _LINEAR):
            out = producer.meta.get("val")
            if out is None or out.dim() != 2:
                return "linear output is not 2-D, so BatchNorm1d's channel is not its feature"
        for arg in bn.args[1:5]:
            if arg is not None and get_tensor(gm, arg) is None:
                return "BatchNorm parameters are not plain tensors"
        return None

    # ---- rewrite -----------------------------------------------------------------------
    def _fold(self, gm: GraphModule, producer: Node, bn: Node) -> None:
        weight_node = producer.args[1]
        bias_node = producer.args[2] if len(producer.args) > 2 else None
        weight = get_tensor(gm, weight_node)
        bias = get_tensor(gm, bias_node)
        gamma, beta, mean, var = (get_tensor(gm, a) for a in bn.args[1:5])
        eps = float(bn.args[_BN_EPS_ARG])

        f64 = torch.float64
        scale = torch.rsqrt(var.to(f64) + eps)
        if gamma is not None:
            scale = scale * gamma.to(f64)
        old_bias = bias.to(f64) if bias is not None else torch.zeros_like(mean, dtype=f64)
        new_bias = (old_bias - mean.to(f64)) * scale
        if beta is not None:
            new_bias = new_bias + beta.to(f64)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        new_weight = weight.to(f64) * scale.reshape(shape)

        weight_target = str(weight_node.target)
        set_tensor(gm, weight_target, new_weight.to(weight.dtype), parameter=True)
        if bias_node is not None:
            set_tensor(gm, str(bias_node.target), new_bias.to(bias.dtype), parameter=True)
        else:
            owner = weight_target.rpartition(".")[0]
            bias_target = fresh_attribute_name(gm, f"{owner}.bias" if owner else "bias")
            set_tensor(gm, bias_target, new_bias.to(weight.dtype), parameter=True)
            with gm.graph.inserting_before(producer):
                new_bias_node = gm.graph.get_attr(bias_target)
            args = list(producer.args)
            args[2:3] = [new_bias_node]  # sets or appends the bias argument
            producer.args = tuple(args)

        bn_attr_prefixes = {str(a.target).rpartition(".")[0] for a in bn.args[1:5] if a is not None}
        bn.replace_all_uses_with(producer)
        gm.graph.erase_node(bn)
        erase_unused_attributes(gm, bn_attr_prefixes)


def _attribute_shared(gm: GraphModule, attr_node: Node) -> bool:
    """True when the tensor is read by another node or stored under another name too."""
    if len(attr_node.users) != 1:
        return True
    tensor = get_tensor(gm, attr_node)
    same = [
        n
        for n in gm.graph.nodes
        if n.op == "get_attr" and n is not attr_node and get_tensor(gm, n) is tensor
    ]
    return bool(same)
