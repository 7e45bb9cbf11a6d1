"""Op rules for layers with parameters: conv, linear, embedding, norms and attention.

See ``graphopt.pruning.rules`` for the table of every rule. Layers are where channels are born
(a conv's or linear's output channels, an embedding's columns, each a new source space of
atoms) and where they are consumed (weight columns); norm layers and attention follow them.
A layer whose weight is shared or computed cannot be sliced, so its channels are frozen.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from graphopt.pruning.dependency import (
    ChannelGraph,
    Layout,
    arg,
    set_layout,
    static,
    unknown,
    val,
    why,
)

__all__ = [
    "attention_rule",
    "batch_norm_rule",
    "conv_rule",
    "embedding_rule",
    "group_norm_rule",
    "layer_norm_rule",
    "linear_rule",
]

aten = torch.ops.aten


def conv_rule(cg: ChannelGraph, node: Node) -> None:
    x, w, b = node.args[0], node.args[1], arg(node, 2, "bias")
    if node.target.overloadpacket is aten.convolution:
        if arg(node, 6, "transposed"):
            return unknown(cg, node)
        groups = arg(node, 8, "groups", 1)
    else:
        groups = arg(node, 6, "groups", 1)
    cout, cin_g = (int(s) for s in val(w).shape[:2])
    cdim = val(node).dim() - (val(w).dim() - 2) - 1
    lay = cg.layout(x)
    if lay is not None and lay.dim != cdim:
        cg.freeze(lay.atoms, why(node, "reads them on a non-channel dim"))
        lay = None
    reason = cg.owned_parameters(node, [w, b])
    if reason is not None:
        if lay is not None:
            cg.freeze(lay.atoms, reason)
        return set_layout(
            cg, node, Layout(cdim, cg.new_space(node, cout, source=True, reason=reason))
        )
    out_atoms = cg.new_space(node, cout, source=True)
    if groups == 1:
        if lay is not None:
            cg.record(node, "in", lay.atoms)
    else:
        in_atoms, cout_g = cg.layout_on(x, cdim), cout // groups
        for g in range(groups):
            block = in_atoms[g * cin_g : (g + 1) * cin_g] + out_atoms[g * cout_g : (g + 1) * cout_g]
            cg.union_all(block, via=f"{node.name} (groups={groups})")
        cg.record(node, "groups", in_atoms, detail=(cin_g,))
    cg.record(node, "out", out_atoms)
    set_layout(cg, node, Layout(cdim, out_atoms))


def linear_rule(cg: ChannelGraph, node: Node) -> None:
    x, w, b = node.args[0], node.args[1], arg(node, 2, "bias")
    lay = cg.layout(x)
    if lay is not None and lay.dim != val(x).dim() - 1:
        cg.freeze(lay.atoms, why(node, "reads them on a non-feature dim"))
        lay = None
    reason = cg.owned_parameters(node, [w, b])
    size, out_dim = int(val(w).shape[0]), val(node).dim() - 1
    if reason is not None:
        if lay is not None:
            cg.freeze(lay.atoms, reason)
        return set_layout(
            cg, node, Layout(out_dim, cg.new_space(node, size, source=True, reason=reason))
        )
    if lay is not None:
        cg.record(node, "in", lay.atoms)
    out_atoms = cg.new_space(node, size, source=True)
    cg.record(node, "out", out_atoms)
    set_layout(cg, node, Layout(out_dim, out_atoms))


def embedding_rule(cg: ChannelGraph, node: Node) -> None:
    w, ids = node.args[0], node.args[1]
    if (lay := cg.layout(ids)) is not None:
        cg.freeze(lay.atoms, why(node, "uses them as indices"))
    reason = cg.owned_parameters(node, [w])
    atoms = cg.new_space(node, int(val(w).shape[1]), source=True, reason=reason or "")
    if reason is None:
        cg.record(node, "out", atoms)
    set_layout(cg, node, Layout(val(node).dim() - 1, atoms))


def batch_norm_rule(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is not None and lay.dim == min(1, val(node.args[0]).dim() - 1):
        reason = cg.owned_parameters(node, node.args[1:5])
        if reason is None:
            cg.record(node, "norm", lay.atoms)
        else:
            cg.freeze(lay.atoms, reason)
    if isinstance(val(node), (list, tuple)):  # native variants: (out, mean, invstd)
        cg.layouts[node] = [lay, None, None]
    else:
        set_layout(cg, node, lay)


def layer_norm_rule(cg: ChannelGraph, node: Node) -> None:
    x, shape = node.args[0], node.args[1]
    lay = cg.layout(x)
    if lay is not None and lay.dim >= val(x).dim() - len(shape):
        w, b = arg(node, 2, "weight"), arg(node, 3, "bias")
        reason = cg.owned_parameters(node, [w, b])
        if len(shape) != 1:
            reason = why(node, "normalises them together with other dims")
        if reason is None:
            cg.record(node, "norm", lay.atoms)
        else:
            cg.freeze(lay.atoms, reason)
    set_layout(cg, node, lay)


def group_norm_rule(cg: ChannelGraph, node: Node) -> None:
    x, groups = node.args[0], node.args[1]
    lay = cg.layout(x)
    if lay is not None and lay.dim == 1:
        per_group = len(lay) // groups
        for g in range(groups):
            cg.union_all(lay.atoms[g * per_group : (g + 1) * per_group], via=f"{node.name} groups")
        reason = cg.owned_parameters(node, [arg(node, 2, "weight"), arg(node, 3, "bias")])
        if reason is None:
            cg.record(node, "norm", lay.atoms, detail=(per_group,))
        else:
            cg.freeze(lay.atoms, reason)
    set_layout(cg, node, lay)


def attention_rule(cg: ChannelGraph, node: Node) -> None:
    q, k, v = node.args[:3]
    mask = arg(node, 3, "attn_mask")
    lays = [cg.layout(t) for t in (q, k, v)]
    mask_lay = cg.layout(mask)
    head_dim = val(q).dim() - 3
    ok = head_dim >= 0 and not node.kwargs.get("enable_gqa", False) and mask_lay is None
    ok = ok and all(lay is not None and lay.dim == head_dim for lay in lays)
    ok = ok and len({len(lay) for lay in lays if lay is not None}) == 1
    if ok and isinstance(val(mask), torch.Tensor):
        m = val(mask)
        md = head_dim - (val(q).dim() - m.dim())
        ok = md < 0 or static(m.shape[md]) == 1
    if not ok:
        for lay in [*lays, mask_lay]:
            if lay is not None:
                cg.freeze(lay.atoms, why(node, "needs q, k, v with prunable heads on dim -3"))
        return set_layout(cg, node, None)
    cg.couple(lays[0], lays[1], via=node.name)
    cg.couple(lays[0], lays[2], via=node.name)
    cg.record(node, "heads", lays[2].atoms)
    set_layout(cg, node, lays[2])
