"""Op rules for layers with parameters: conv, linear, matmul, embedding, norms, PReLU, attention.

See ``graphopt.pruning.rules`` for the table of every rule. Layers are where channels are born
(a conv's or linear's output channels, an embedding's columns, each a new source space of
atoms) and where they are consumed (weight columns); norm layers and attention follow them.
A layer whose weight is computed cannot be sliced, so its channels are frozen; one whose
weight is shared with other nodes is sliced once for all of them (tied parameters, see
``graphopt.pruning.dependency``).

Every ``out`` and ``in`` record says in its ``detail`` which dims to cut, so the surgery and
the importance read the same layout the rule saw: ``out`` → (weight dim, bias dim), ``in`` →
(weight dim,), ``NO_DIM`` where nothing is cut. Weight layouts:

=====================  ======================  ===============  ===========================
layer                  weight                  output channels  input channels
=====================  ======================  ===============  ===========================
conv                   [out, in/groups, k…]    dim 0            dim 1 (dense only)
transposed conv        [in, out/groups, k…]    dim 1 (dense)    dim 0
linear                 [out, in]               dim 0            dim 1
x @ W (mm, addmm, …)   […, in, out]            dim −1           dim −2
W @ x                  […, out, in]            dim −2           dim −1
einsum                 by its subscripts       the free letter  the contracted letter
embedding              [vocab, dim]            dim 1            (indices)
=====================  ======================  ===============  ===========================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.fx import Node

from graphopt.pruning.dependency import (
    NO_DIM,
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
    "activation_product_rule",
    "attention_rule",
    "batch_norm_rule",
    "conv_rule",
    "embedding_rule",
    "group_norm_rule",
    "index_rule",
    "instance_norm_rule",
    "layer_norm_rule",
    "linear_rule",
    "matmul_rule",
    "prelu_rule",
]

aten = torch.ops.aten


def _input_on(cg: ChannelGraph, node: Node, x: Node, dim: int, what: str) -> Layout | None:
    """``x``'s layout if its channels are on ``dim``; elsewhere they are frozen (``what``)."""
    lay = cg.layout(x)
    if lay is not None and lay.dim != dim:
        cg.freeze(lay.atoms, why(node, what))
        return None
    return lay


def _refuse(cg: ChannelGraph, node: Node, lay: Layout | None, out: Layout, reason: str) -> None:
    """A layer whose parameters cannot be sliced: its input and output channels stay."""
    if lay is not None:
        cg.freeze(lay.atoms, reason)
    cg.freeze(out.atoms, reason)
    set_layout(cg, node, out)


# --------------------------------------------------------------------------- conv


def _conv_form(node: Node) -> tuple[bool, int]:
    """(transposed, groups) of any conv overload."""
    packet = node.target.overloadpacket
    if packet is aten.convolution:
        return bool(arg(node, 6, "transposed")), arg(node, 8, "groups", 1)
    transposed = packet in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d)
    return transposed, arg(node, 6, "groups", 1)


def conv_rule(cg: ChannelGraph, node: Node) -> None:
    """Conv and transposed conv, dense or grouped (whole groups go, ``groups`` shrinks).

    A transposed conv's weight is ``[in, out/groups, k…]``: the roles of dims 0 and 1 swap,
    and in a grouped one dim 0 holds every group's inputs (cut with the groups) while dim 1
    holds one group's outputs (unchanged). ``output_padding`` and strides stay as they are.
    """
    x, w, b = node.args[0], node.args[1], arg(node, 2, "bias")
    transposed, groups = _conv_form(node)
    first, second = (int(s) for s in val(w).shape[:2])
    cout = second * groups if transposed else first
    cin_g = first // groups if transposed else second
    cdim = val(node).dim() - (val(w).dim() - 2) - 1
    lay = _input_on(cg, node, x, cdim, "reads them on a non-channel dim")
    out = Layout(cdim, cg.new_space(node, cout, source=True))
    w_out, w_in = (1, 0) if transposed else (0, 1)
    if groups == 1:
        weight_dims = {w_out: out.atoms, w_in: lay.atoms if lay is not None else None}
    else:
        in_atoms = cg.layout_on(x, cdim)
        weight_dims = {0: in_atoms} if transposed else {0: out.atoms}
    reason = cg.claim(node, [(w, weight_dims), (b, {0: out.atoms})])
    if reason is not None:
        return _refuse(cg, node, lay, out, reason)
    if groups == 1:
        if lay is not None:
            cg.record(node, "in", lay.atoms, detail=(w_in,))
        cg.record(node, "out", out.atoms, detail=(w_out, 0))
        return set_layout(cg, node, out)
    cout_g = cout // groups
    for g in range(groups):
        block = in_atoms[g * cin_g : (g + 1) * cin_g] + out.atoms[g * cout_g : (g + 1) * cout_g]
        cg.union_all(block, via=f"{node.name} (groups={groups})")
    cg.record(node, "groups", in_atoms, detail=(cin_g, 0 if transposed else NO_DIM))
    cg.record(node, "out", out.atoms, detail=(NO_DIM if transposed else 0, 0))
    set_layout(cg, node, out)


# --------------------------------------------------------------------------- linear, matmul


def linear_rule(cg: ChannelGraph, node: Node) -> None:
    x, w, b = node.args[0], node.args[1], arg(node, 2, "bias")
    lay = _input_on(cg, node, x, val(x).dim() - 1, "reads them on a non-feature dim")
    out = Layout(val(node).dim() - 1, cg.new_space(node, int(val(w).shape[0]), source=True))
    in_atoms = lay.atoms if lay is not None else None
    reason = cg.claim(node, [(w, {0: out.atoms, 1: in_atoms}), (b, {0: out.atoms})])
    if reason is not None:
        return _refuse(cg, node, lay, out, reason)
    if lay is not None:
        cg.record(node, "in", lay.atoms, detail=(1,))
    cg.record(node, "out", out.atoms, detail=(0, 0))
    set_layout(cg, node, out)


@dataclass(frozen=True)
class _Product:
    """A product of an activation ``x`` and a parameter ``w``, as dims of each tensor.

    ``x_dim``: the dim of ``x`` summed with ``w``'s ``w_in``; ``w_out``: the dim of ``w``
    that becomes dim ``out_dim`` of the result.
    """

    x: Node
    w: Node
    x_dim: int
    w_in: int
    w_out: int
    out_dim: int


def _is_param(a: object) -> bool:
    return isinstance(a, Node) and a.op == "get_attr"


def _matrix_product(node: Node, a: object, b: object) -> _Product | None:
    """``a @ b`` (mm, bmm, matmul, addmm) with exactly one parameter operand of rank ≥ 2."""
    if _is_param(a) == _is_param(b) or not all(isinstance(val(t), torch.Tensor) for t in (a, b)):
        return None
    ra, rb, ro = val(a).dim(), val(b).dim(), val(node).dim()
    if _is_param(b) and rb >= 2:  # x @ W, W [..., in, out]
        return _Product(a, b, ra - 1, rb - 2, rb - 1, ro - 1)
    if _is_param(a) and ra >= 2 and rb >= 2:  # W @ x, W [..., out, in]
        return _Product(b, a, rb - 2, ra - 1, ra - 2, ro - 2)
    return None


def _einsum_product(node: Node) -> _Product | None:
    """``einsum`` of an activation and a parameter that contracts one letter, adds one.

    Other letters of the parameter must be batch letters (in both operands and the result);
    an ellipsis, a repeated letter or an implicit output is not analysed.
    """
    equation, operands = node.args[0], node.args[1]
    if not isinstance(equation, str) or len(operands) != 2 or "." in equation:
        return None
    lhs, arrow, out = equation.replace(" ", "").partition("->")
    subs = lhs.split(",")
    if not arrow or len(subs) != 2 or [_is_param(o) for o in operands].count(True) != 1:
        return None
    wi = 0 if _is_param(operands[0]) else 1
    ws, xs = subs[wi], subs[1 - wi]
    if any(len(set(s)) != len(s) for s in (ws, xs, out)):
        return None
    contracted = [c for c in ws if c in xs and c not in out]
    free = [c for c in ws if c not in xs and c in out]
    batch = [c for c in ws if c in xs and c in out]
    if len(contracted) != 1 or len(free) != 1 or len(ws) != 2 + len(batch):
        return None
    (c,), (f,) = contracted, free
    x, w = operands[1 - wi], operands[wi]
    return _Product(x, w, xs.index(c), ws.index(c), ws.index(f), out.index(f))


def _bias_dim(node: Node, bias: object, out_dim: int, size: int) -> int:
    """The dim of ``addmm``'s bias that broadcasts onto the output channels, or NO_DIM."""
    if bias is None:
        return NO_DIM
    d = out_dim - (val(node).dim() - val(bias).dim())
    return d if d >= 0 and static(val(bias).shape[d]) == size else NO_DIM


def matmul_rule(cg: ChannelGraph, node: Node) -> None:
    """mm/addmm/matmul/bmm/einsum with a parameter operand: a linear layer in another layout.

    HF GPT-2's ``Conv1D`` is ``addmm(bias, x.view(-1, in), weight[in, out])``. Without a
    parameter operand (q @ kᵀ of eager attention) the product mixes channels: unknown.
    """
    packet = node.target.overloadpacket
    if packet is aten.einsum:
        form, bias = _einsum_product(node), None
    elif packet is aten.addmm:
        form, bias = _matrix_product(node, node.args[1], node.args[2]), node.args[0]
    else:
        form, bias = _matrix_product(node, node.args[0], node.args[1]), None
    if form is None:
        if packet in (aten.mm, aten.bmm, aten.matmul) and not any(
            _is_param(t) for t in node.args[:2]
        ):
            return activation_product_rule(cg, node)
        return unknown(cg, node)
    lay = _input_on(cg, node, form.x, form.x_dim, "reads them on a dim it does not contract")
    size = int(val(form.w).shape[form.w_out])
    out = Layout(form.out_dim, cg.new_space(node, size, source=True))
    b_dim = _bias_dim(node, bias, form.out_dim, size)
    in_atoms = lay.atoms if lay is not None else None
    claims = [(form.w, {form.w_out: out.atoms, form.w_in: in_atoms})]
    claims.append((bias, {b_dim: out.atoms} if b_dim != NO_DIM else {}))
    reason = cg.claim(node, claims)
    if reason is not None:
        return _refuse(cg, node, lay, out, reason)
    if lay is not None:
        cg.record(node, "in", lay.atoms, detail=(form.w_in,))
    cg.record(node, "out", out.atoms, detail=(form.w_out, b_dim))
    set_layout(cg, node, out)


def activation_product_rule(cg: ChannelGraph, node: Node) -> None:
    """``a @ b`` of two activations (eager attention's q @ kᵀ and p @ v): dim by dim.

    With ``a`` ``[…, m, k]`` and ``b`` ``[…, k, n]``: channels on the contracted dims are
    coupled position by position (a channel zero in both adds nothing to the sum); ``a``'s
    rows go to the result's dim −2 and ``b``'s columns to −1; batch dims (heads) broadcast as
    in an elementwise op, channels of both operands there coupled, and an operand full-size
    there without channels fixes them. One result dim can carry channels: a second is
    frozen. Coupled heads are recorded (``heads``: nothing to cut, the MACs shrink with them).
    """
    a, b = node.args[0], node.args[1]
    va, vb, vo = val(a), val(b), val(node)
    if not all(isinstance(v, torch.Tensor) and v.dim() >= 2 for v in (va, vb, vo)):
        return unknown(cg, node)
    la, lb, ro = cg.layout(a), cg.layout(b), vo.dim()
    where = {}  # operand → its channel dim counted from the end (−1, −2, or a batch dim)
    for x, lay in ((a, la), (b, lb)):
        if lay is not None:
            where[x] = lay.dim - val(x).dim()
    out: list[Layout] = []
    if where.get(a) == -1 or where.get(b) == -2:
        if where.get(a) == -1 and where.get(b) == -2 and len(la) == len(lb):
            cg.couple(la, lb, via=node.name)
        else:
            for x, lay, d in ((a, la, -1), (b, lb, -2)):
                if where.get(x) == d:
                    cg.freeze(lay.atoms, why(node, "contracts them with fixed channels"))
    if where.get(a) == -2:
        out.append(Layout(ro - 2, la.atoms))
    if where.get(b) == -1:
        out.append(Layout(ro - 1, lb.atoms))
    batch = [(x, lay, where[x]) for x, lay in ((a, la), (b, lb)) if where.get(x, 0) < -2]
    if batch:
        heads = _product_batch(cg, node, batch)
        if heads is not None:
            out.append(heads)
            cg.record(node, "heads", heads.atoms)
    for extra in out[1:]:
        cg.freeze(extra.atoms, why(node, "puts channels on a second dim of its result"))
    set_layout(cg, node, out[0] if out else None)


def _product_batch(
    cg: ChannelGraph, node: Node, batch: list[tuple[Node, Layout, int]]
) -> Layout | None:
    """The result layout of channels on batch dims of a product, or None (frozen)."""
    a, b = node.args[0], node.args[1]
    d = {end for _, _, end in batch}
    if len(d) != 1:
        for _, lay, _ in batch:
            cg.freeze(lay.atoms, why(node, "mixes operands with channels on different dims"))
        return None
    end = d.pop()
    tracked = {x for x, _, _ in batch}
    for other in (a, b):
        shape = val(other).shape
        if other not in tracked and -end <= len(shape) and static(shape[end]) != 1:
            for _, lay, _ in batch:
                cg.freeze(lay.atoms, why(node, f"combines them with {other.name}, fixed size"))
            return None
    lays = [lay for _, lay, _ in batch]
    if len({len(lay) for lay in lays}) != 1:
        return None
    for other in lays[1:]:
        cg.couple(lays[0], other, via=node.name)
    return Layout(val(node).dim() + end, lays[0].atoms)


def embedding_rule(cg: ChannelGraph, node: Node) -> None:
    w, ids = node.args[0], node.args[1]
    if (lay := cg.layout(ids)) is not None:
        cg.freeze(lay.atoms, why(node, "uses them as indices"))
    atoms = cg.new_space(node, int(val(w).shape[1]), source=True)
    reason = cg.claim(node, [(w, {1: atoms})])  # rows are looked up: dim 0 stays whole
    if reason is not None:
        cg.freeze(atoms, reason)
    else:
        cg.record(node, "out", atoms, detail=(1, NO_DIM))
    set_layout(cg, node, Layout(val(node).dim() - 1, atoms))


# --------------------------------------------------------------------------- norms, PReLU


def _per_channel(
    cg: ChannelGraph,
    node: Node,
    lay: Layout,
    tensors: Sequence[object],
    role: str,
    detail: tuple[int, ...] = (),
) -> None:
    """Record ``role`` when every per-channel tensor can be sliced, else freeze the channels."""
    reason = cg.claim(node, [(t, {0: lay.atoms}) for t in tensors])
    if reason is None:
        cg.record(node, role, lay.atoms, detail=detail)
    else:
        cg.freeze(lay.atoms, reason)


def batch_norm_rule(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is not None and lay.dim == min(1, val(node.args[0]).dim() - 1):
        _per_channel(cg, node, lay, node.args[1:5], "norm")
    if isinstance(val(node), (list, tuple)):  # native variants: (out, mean, invstd)
        cg.layouts[node] = [lay, None, None]
    else:
        set_layout(cg, node, lay)


def instance_norm_rule(cg: ChannelGraph, node: Node) -> None:
    """Like BatchNorm on dim 1 (weight, bias, running stats); statistics over the spatial dims.

    Channels on a spatial dim are frozen when the statistics come from the input: removing
    positions there would change every mean and variance.
    """
    lay = cg.layout(node.args[0])
    if lay is not None and lay.dim == 1:
        _per_channel(cg, node, lay, node.args[1:5], "norm")
    elif lay is not None and lay.dim >= 2 and arg(node, 5, "use_input_stats", True):
        cg.freeze(lay.atoms, why(node, "normalises over them"))
        lay = None
    set_layout(cg, node, lay)


def prelu_rule(cg: ChannelGraph, node: Node) -> None:
    """One slope per channel on dim 1 (sliced); a single slope passes every channel."""
    x, w = node.args[0], node.args[1]
    lay = cg.layout(x)
    cdim = 1 if val(x).dim() >= 2 else 0
    if lay is not None and lay.dim == cdim and val(w).numel() != 1:
        _per_channel(cg, node, lay, [w], "channelwise", detail=(1, 0))
    set_layout(cg, node, lay)


def layer_norm_rule(cg: ChannelGraph, node: Node) -> None:
    x, shape = node.args[0], node.args[1]
    lay = cg.layout(x)
    if lay is not None and lay.dim >= val(x).dim() - len(shape):
        w, b = arg(node, 2, "weight"), arg(node, 3, "bias")
        if len(shape) != 1:
            cg.freeze(lay.atoms, why(node, "normalises them together with other dims"))
        else:
            _per_channel(cg, node, lay, [w, b], "norm")
    set_layout(cg, node, lay)


def group_norm_rule(cg: ChannelGraph, node: Node) -> None:
    x, groups = node.args[0], node.args[1]
    lay = cg.layout(x)
    if lay is not None and lay.dim == 1:
        per_group = len(lay) // groups
        for g in range(groups):
            cg.union_all(lay.atoms[g * per_group : (g + 1) * per_group], via=f"{node.name} groups")
        tensors = [arg(node, 2, "weight"), arg(node, 3, "bias")]
        _per_channel(cg, node, lay, tensors, "norm", detail=(per_group,))
    set_layout(cg, node, lay)


# --------------------------------------------------------------------------- attention


def attention_rule(cg: ChannelGraph, node: Node) -> None:
    """``softmax(q kᵀ · scale + mask) v``: heads, or the channels of one head.

    Heads (dim −3 of q, k, v): coupled head by head, with a mask whose head dim carries
    channels too (a relative position bias made per head, T5's or BEiT's), and cut whole
    (``heads``). Without heads there, the channels of q and k (dim −1) are coupled when the
    scale is given (the default 1/√d would change with them), and v's channels (dim −1) pass to
    the output. Grouped-query attention, a mask with other channels and every other placement
    freeze them.
    """
    q, k, v = node.args[:3]
    mask = arg(node, 3, "attn_mask")
    lq, lk, lv, lm = (cg.layout(t) for t in (q, k, v, mask))
    rank = val(q).dim()
    head_dim = rank - 3
    on_heads = [lay for lay in (lq, lk, lv) if lay is not None and lay.dim == head_dim]
    gqa = node.kwargs.get("enable_gqa", False)
    if on_heads and not gqa and head_dim >= 0:
        heads = _attention_heads(cg, node, (lq, lk, lv), lm)
        if heads is not None:
            return set_layout(cg, node, heads)
    elif not gqa and head_dim >= 0 and lm is None:
        return _attention_channels(cg, node, lq, lk, lv)
    _freeze_attention(cg, node, (lq, lk, lv, lm))
    set_layout(cg, node, None)


def _freeze_attention(cg: ChannelGraph, node: Node, lays: Sequence[Layout | None]) -> None:
    for lay in lays:
        if lay is not None:
            cg.freeze(lay.atoms, why(node, "needs q, k, v with prunable heads on dim -3"))


def _attention_heads(
    cg: ChannelGraph, node: Node, qkv: tuple[Layout | None, ...], lm: Layout | None
) -> Layout | None:
    """Heads coupled across q, k, v and a per-head mask; None when they cannot be."""
    q, mask = node.args[0], arg(node, 3, "attn_mask")
    head_dim = val(q).dim() - 3
    if not all(lay is not None and lay.dim == head_dim for lay in qkv):
        return None
    if len({len(lay) for lay in qkv}) != 1:
        return None
    if isinstance(val(mask), torch.Tensor):
        m = val(mask)
        md = head_dim - (val(q).dim() - m.dim())
        per_head = md >= 0 and static(m.shape[md]) != 1
        if lm is not None and (lm.dim != md or len(lm) != len(qkv[0])):
            return None
        if lm is None and per_head:
            return None
    lq, lk, lv = qkv
    cg.couple(lq, lk, via=node.name)
    cg.couple(lq, lv, via=node.name)
    if lm is not None:
        cg.couple(lq, lm, via=f"{node.name} (per-head mask)")
    cg.record(node, "heads", lv.atoms)
    return lv


def _attention_channels(
    cg: ChannelGraph, node: Node, lq: Layout | None, lk: Layout | None, lv: Layout | None
) -> None:
    """No heads on dim −3: q·k channels coupled (given a scale), v's channels pass."""
    last = val(node.args[0]).dim() - 1
    scale = node.kwargs.get("scale", node.args[6] if len(node.args) > 6 else None)
    qk = [lay for lay in (lq, lk) if lay is not None]
    paired = len(qk) == 2 and all(lay.dim == last for lay in qk) and len(lq) == len(lk)
    if paired and scale is not None:
        cg.couple(lq, lk, via=node.name)
    else:
        what = "sums them in q·kᵀ under the default scale 1/√d, which they set"
        for lay in qk:
            cg.freeze(lay.atoms, why(node, what if paired else "pairs them with fixed channels"))
    if lv is not None and lv.dim == val(node.args[2]).dim() - 1:
        return set_layout(cg, node, Layout(val(node).dim() - 1, lv.atoms))
    if lv is not None:
        cg.freeze(lv.atoms, why(node, "attends over them"))
    set_layout(cg, node, None)


def index_rule(cg: ChannelGraph, node: Node) -> None:
    """``x[idx]`` (``aten.index.Tensor``) with one index tensor on dim 0.

    Rows gathered from a 2-d parameter are an embedding lookup (a relative position bias
    table ``[distances, heads]`` read by a position index): its columns are a new source,
    cut like an embedding's (``out``). Channels of an activation on a dim that is not
    indexed pass, moved by the index's rank. Anything else freezes.
    """
    x, indices = node.args[0], list(node.args[1])
    idx = indices[0] if len(indices) == 1 else None
    if not isinstance(val(idx), torch.Tensor) or isinstance(val(x), (list, tuple)):
        return unknown(cg, node)
    if (lay := cg.layout(idx)) is not None:
        cg.freeze(lay.atoms, why(node, "uses them as indices"))
    lay = cg.layout(x)
    if _is_param(x) and val(x).dim() == 2:
        atoms = cg.new_space(node, int(val(x).shape[1]), source=True)
        reason = cg.claim(node, [(x, {1: atoms})])
        if reason is not None:
            cg.freeze(atoms, reason)
        else:
            cg.record(node, "out", atoms, detail=(1, NO_DIM))
        return set_layout(cg, node, Layout(val(node).dim() - 1, atoms))
    if lay is None or lay.dim == 0:
        return unknown(cg, node) if lay is not None else set_layout(cg, node, None)
    set_layout(cg, node, Layout(lay.dim - 1 + val(idx).dim(), lay.atoms))
