"""Op rules of the channel analysis: how each ATen op moves, couples or freezes channels.

Each rule reads the layouts of a node's inputs (see ``graphopt.pruning.dependency``), sets the
layout of its output, couples or freezes atoms, and records what a rewrite must touch.

==========================  ===============================================================
op                          rule
==========================  ===============================================================
conv1d/2d/3d, convolution,  output channels are a new source (``out``); a dense conv's input
conv_transpose1d/2d/3d      channels are its weight's input dim (``in``); a grouped/depthwise
                            conv couples group ``g``'s input and output channels, so whole
                            groups go and ``groups`` shrinks (``groups``). Transposed: weight
                            ``[in, out/groups, k…]``, the same couplings with dims 0 and 1
                            swapped; strides, ``output_padding`` kept
linear                      new source on the last dim (``out``); input features (``in``)
mm, addmm, matmul, bmm,     with one parameter operand (GPT-2's Conv1D: ``addmm(b, x, W)``):
einsum                      a linear layer, ``x @ W[in, out]`` or ``W[out, in] @ x``, einsum
                            by its letters (one contracted, one new); addmm's bias sliced.
                            Between two activations (eager q @ kᵀ, p @ v): contracted dims
                            coupled, rows/columns pass, batch dims (heads) coupled
index                       rows of a 2-d parameter gathered (a relative position bias
                            table): its columns are a new source, cut like an embedding's;
                            an activation's channels on a dim not indexed pass
embedding                   new source: the embedding dimension (``out``)
tied parameters             one tensor read by several layers (embedding = LM head, a block
                            applied twice): their channels on each shared dim are coupled,
                            the tensor is cut once and stays shared; a dim one user keeps
                            whole, or a user without a rule, freezes them
batch_norm, instance_norm,  follow their channels (``norm``: weight, bias, running stats);
layer_norm, group_norm      group_norm couples each group (whole groups go, ``num_groups``
                            shrinks); a LayerNorm over several dims that include the
                            channels, or an InstanceNorm's input statistics over them,
                            freezes them
prelu                       one slope per channel sliced (``channelwise``); one slope passes
elementwise (relu(_),       pass channels through; operands broadcast from the right; two
hardtanh(_), gelu, silu,    operands with channels on the same dim are coupled position by
dropout, add, mul, …)       position (residual add, squeeze-excite mul); a parameter with one
                            value per channel is sliced (``channelwise``: ``x @ w + b``),
                            also seen through unsqueeze/expand/casts (a layer scale
                            ``γ[:, None, None]``, a class token ``cls.expand(B, -1, -1)``);
                            another operand without channels but full-size there freezes them
pools, upsample_* (nearest, pass channels if the channel dim is not a spatial dim
(bi)linear, bicubic,
nearest-exact, _aa)
pad, constant_pad_nd,       spatial dims: pass channels; a constant pad of the channel dim
reflection/replication_pad  adds fixed (frozen) channels around them; reflect/replicate/
                            circular or negative (crop) padding of the channel dim freezes
pixel_shuffle,              shuffle: output channel c couples input block c·r²…c·r²+r²−1 (a
pixel_unshuffle             block goes as a whole); unshuffle repeats a channel's atom r² times
mean/sum/amax/amin          pass channels unless reduced over; softmax: unless along them
view/reshape/flatten/       follow positions through the reshape (matched from the left, else
unflatten/(un)squeeze       the right: ``view(-1, C)`` merges a batch dim); a merge with
                            spatial dims repeats a channel's atom (flatten → linear); a split
                            into blocks couples each block (heads); a channel shuffle
                            (split, swap, merge) keeps the finer of its two couplings; size
                            constants recorded (``shape``); ``reshape_as(other)`` couples
                            ``other``'s channels with the result's
roll                        along other dims: pass (Swin's shifted windows); along them:
                            freeze
expand                      channels pass unless broadcast; their written size (``shape``):
                            GQA's repeated key/value heads each couple their query heads
permute/transpose/t,        move the channel dim; select/slice along it freeze it (a full
select, slice               slice passes)
cat                         along the channel dim: concatenates atoms (graph inputs and other
                            fixed tensors get frozen atoms); along another dim: couples
split/chunk/unbind          along the channel dim: slices atoms, sizes recorded (``split``);
                            the first channel of every chunk is frozen so no chunk empties
scaled_dot_product_attn.    q, k, v heads (dim −3) coupled head by head (``heads``), with a
                            per-head mask's channels (T5's bias); with no heads there, q and
                            k channels (dim −1) coupled when the scale is given, v's pass
_assert_tensor_metadata     a dtype/device check passes; one that pins sizes freezes
anything else               freezes every channel that touches it
==========================  ===============================================================
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable

import numpy as np
import torch
from torch.fx import Node

from graphopt.pruning.dependency import (
    ChannelGraph,
    Layout,
    arg,
    freeze_and_clear,
    norm_dim,
    set_layout,
    static,
    unknown,
    val,
    why,
)
from graphopt.pruning.layer_rules import (
    attention_rule,
    batch_norm_rule,
    conv_rule,
    embedding_rule,
    group_norm_rule,
    index_rule,
    instance_norm_rule,
    layer_norm_rule,
    linear_rule,
    matmul_rule,
    prelu_rule,
)

__all__ = ["apply_rule", "supported_ops"]

aten = torch.ops.aten
Rule = Callable[[ChannelGraph, Node], None]


def apply_rule(cg: ChannelGraph, node: Node) -> None:
    """Run the rule for ``node`` (unknown ops freeze their inputs' channels)."""
    if node.op in ("placeholder", "get_attr"):
        cg.layouts[node] = None
    elif node.op == "output":
        cg.freeze_inputs(node, "reaches the model output")
    elif node.op == "call_function" and node.target is operator.getitem:
        _getitem(cg, node)
    elif node.op == "call_function" and getattr(node.target, "overloadpacket", None) in _RULES:
        _RULES[node.target.overloadpacket](cg, node)
    else:
        unknown(cg, node)


def supported_ops() -> list[str]:
    """The ATen op packets with a rule (everything else freezes the channels it touches)."""
    return sorted(str(p) for p in _RULES)


def _getitem(cg: ChannelGraph, node: Node) -> None:
    value, index = cg.layouts.get(node.args[0]), node.args[1]
    if isinstance(value, list) and isinstance(index, int) and -len(value) <= index < len(value):
        cg.layouts[node] = value[index]
    else:
        unknown(cg, node)


# --------------------------------------------------------------------------- channel-wise ops


def _elementwise(cg: ChannelGraph, node: Node) -> None:
    """Channels pass through; operands on the same dim are coupled (see the table).

    A parameter operand with one value per channel (a bias added by hand, a layer scale) is
    sliced with them (``channelwise``); any other full-size operand without channels fixes
    their count.
    """
    out = val(node)
    if not isinstance(out, torch.Tensor):
        return unknown(cg, node)
    rank = out.dim()
    tensors = [a for a in node.all_input_nodes if isinstance(val(a), torch.Tensor)]
    tracked = [(a, lay) for a in tensors if (lay := cg.layout(a)) is not None]
    if not tracked:
        return set_layout(cg, node, None)
    dims = {lay.dim + rank - val(a).dim() for a, lay in tracked}
    if len(dims) != 1:
        for _, lay in tracked:
            cg.freeze(lay.atoms, why(node, "mixes tensors with channels on different dims"))
        return set_layout(cg, node, None)
    d = dims.pop()
    size = static(out.shape[d])
    coupled: list[Layout] = []
    fixed: list[Node] = []
    params: list[tuple[Node, Node, int]] = []  # (parameter, node holding it as args[0], dim)
    for a in tensors:
        value, lay = val(a), cg.layout(a)
        ad = d - (rank - value.dim())
        full = ad >= 0 and static(value.shape[ad]) == size
        if lay is not None and full:
            coupled.append(lay)
        elif lay is not None:
            cg.freeze(lay.atoms, why(node, "broadcasts a channel tensor"))
        elif full and size != 1 and a.op == "get_attr" and a in node.args:
            params.append((a, node, ad))
        elif full and size != 1 and (seen := _parameter_behind(a, ad)) is not None:
            params.append(seen)
        elif full and size != 1:
            fixed.append(a)
    if sum(holder is node for _, holder, _ in params) > 1:  # one channelwise record per node
        fixed.extend(a for a, holder, _ in params if holder is node)
    if fixed or not coupled:
        for lay in coupled:
            cg.freeze(lay.atoms, why(node, f"combines them with {fixed[0].name}, fixed size"))
        return set_layout(cg, node, None)
    for other in coupled[1:]:
        cg.couple(coupled[0], other, via=node.name)
    for a, holder, ad in params:
        reason = cg.claim(holder, [(a, {ad: coupled[0].atoms})])
        if reason is None:
            index = holder.args.index(a)
            cg.record(holder, "channelwise", coupled[0].atoms, detail=(index, ad))
        else:
            cg.freeze(coupled[0].atoms, reason)
    set_layout(cg, node, coupled[0])


def _parameter_behind(a: Node, dim: int) -> tuple[Node, Node, int] | None:
    """(parameter, the node reading it, its dim) when ``a`` is a parameter seen through views.

    ``a``'s dim ``dim`` must be one of the parameter's own dims (not a dim ``unsqueeze`` or
    ``expand`` made), every node on the way must have one user (so slicing the parameter
    changes this operand only), and an ``expand`` must give that dim as ``-1``: a written
    size would need rewriting. The first node after the parameter is the one the surgery
    slices through (``channelwise`` on its ``args[0]``).
    """
    holder = None
    while a.op != "get_attr":
        packet = getattr(a.target, "overloadpacket", None)
        if a.op != "call_function" or packet not in _PARAMETER_VIEWS or len(a.users) != 1:
            return None
        src = a.args[0]
        if not isinstance(src, Node) or not isinstance(val(src), torch.Tensor):
            return None
        if packet is aten.unsqueeze:
            k = norm_dim(a.args[1], val(a).dim())
            if dim == k:
                return None
            dim -= dim > k
        elif packet is aten.expand:
            lead = val(a).dim() - val(src).dim()
            sizes = list(a.args[1])
            if dim < lead or sizes[dim] != -1:
                return None
            dim -= lead
        holder, a = a, src
    if holder is None or len(a.users) != 1:
        return None
    return a, holder, dim


def _spatial(count: int) -> Rule:
    """Pools and upsampling act on the last ``count`` dims only."""

    def rule(cg: ChannelGraph, node: Node) -> None:
        lay = cg.layout(node.args[0])
        if lay is None:
            return set_layout(cg, node, None)
        if lay.dim >= val(node.args[0]).dim() - count:
            return freeze_and_clear(cg, node, lay, "acts on the channel dim")
        set_layout(cg, node, lay)

    return rule


def _pad_mode(node: Node) -> str:
    name = node.target.overloadpacket.__name__
    if name == "pad":
        return arg(node, 2, "mode", "constant")
    return {"constant_pad_nd": "constant"}.get(name, name.split("_")[0])  # reflection_pad2d


def _pad(cg: ChannelGraph, node: Node) -> None:
    """Padding (``pad``, ``constant_pad_nd``, reflection/replication) pairs from the last dim.

    Padding only other dims passes the channels. A constant pad of the channel dim adds fixed
    channels around them (new frozen atoms, like ``cat`` with a constant): the pad amounts
    stay right whatever is pruned in between. Reflect, replicate or circular padding of the
    channel dim copies channels, and a negative pad crops them: both freeze.
    """
    src, pads = node.args[0], list(node.args[1])
    lay = cg.layout(src)
    if lay is None:
        return set_layout(cg, node, None)
    i = val(src).dim() - 1 - lay.dim  # the pair of the channel dim, counted from the last
    before, after = (pads[2 * i], pads[2 * i + 1]) if 2 * i + 1 < len(pads) else (0, 0)
    if (before, after) == (0, 0):
        return set_layout(cg, node, lay)
    if _pad_mode(node) != "constant":
        return freeze_and_clear(cg, node, lay, "pads them with copies of channels")
    if static(before) is None or static(after) is None or before < 0 or after < 0:
        return freeze_and_clear(cg, node, lay, "crops them or pads them by a computed amount")
    reason = why(node, "pads them with constant channels, which cannot change")
    left = cg.new_space(node, before, source=False, reason=reason) if before else ()
    right = cg.new_space(node, after, source=False, reason=reason) if after else ()
    set_layout(cg, node, Layout(lay.dim, left + lay.atoms + right))


def _pixel_shuffle(cg: ChannelGraph, node: Node) -> None:
    """``(C·r², H, W) → (C, H·r, W·r)``: output channel ``c`` is input block ``c·r² … +r²``.

    pixel_shuffle couples each block (it goes as a whole with its output channel);
    pixel_unshuffle repeats each input channel's atom over its r² outputs (as ``flatten``
    does). Nothing to rewrite: both read the channel count from their input.
    """
    src, r = node.args[0], node.args[1]
    lay = cg.layout(src)
    if lay is None:
        return set_layout(cg, node, None)
    cdim = val(src).dim() - 3
    if lay.dim > cdim:
        return freeze_and_clear(cg, node, lay, "moves pixels across them")
    if lay.dim < cdim:
        return set_layout(cg, node, lay)
    block = r * r
    if node.target.overloadpacket is aten.pixel_unshuffle:
        return set_layout(cg, node, Layout(cdim, tuple(a for a in lay.atoms for _ in range(block))))
    for start in range(0, len(lay), block):
        cg.union_all(lay.atoms[start : start + block], via=f"{node.name} (r²={block} block)")
    set_layout(cg, node, Layout(cdim, lay.atoms[::block]))


def _expand(cg: ChannelGraph, node: Node) -> None:
    """Broadcast to a larger shape (GQA's ``repeat_kv``: ``k[:, :, None].expand(…)``).

    The channels keep their positions (new dims come first) when their dim is not the one
    broadcast; a size written there (rather than ``-1``) is the channel count (``shape``).
    """
    src = node.args[0]
    lay = cg.layout(src)
    if lay is None:
        return set_layout(cg, node, None)
    d = lay.dim + val(node).dim() - val(src).dim()
    entry = list(node.args[1])[d]
    if static(val(node).shape[d]) != len(lay) or len(lay) == 1:
        return freeze_and_clear(cg, node, lay, "broadcasts along the channels")
    if isinstance(entry, int) and entry >= 0:
        cg.record(node, "shape", lay.atoms, detail=(d,))
    elif entry != -1:
        return freeze_and_clear(cg, node, lay, "sets the channel count from a computed size")
    set_layout(cg, node, Layout(d, lay.atoms))


def _roll(cg: ChannelGraph, node: Node) -> None:
    """A roll along other dims passes the channels (Swin's shifted windows); along them, or
    flattened (no ``dims``), it moves channels to other positions: frozen."""
    lay = cg.layout(node.args[0])
    if lay is None:
        return set_layout(cg, node, None)
    dims = arg(node, 2, "dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    rank = val(node.args[0]).dim()
    if not dims or lay.dim in {norm_dim(d, rank) for d in dims}:
        return freeze_and_clear(cg, node, lay, "rolls the channels")
    set_layout(cg, node, lay)


def _assert_metadata(cg: ChannelGraph, node: Node) -> None:
    """A dtype/device check passes every channel; one that pins sizes freezes them."""
    lay = cg.layout(node.args[0])
    if lay is not None and (arg(node, 1, "size") is not None or arg(node, 2, "stride") is not None):
        cg.freeze(lay.atoms, why(node, "asserts the tensor's sizes"))
    cg.layouts[node] = None


def _reduction(cg: ChannelGraph, node: Node) -> None:
    src = node.args[0]
    lay, rank = cg.layout(src), val(src).dim()
    if lay is None:
        return set_layout(cg, node, None)
    dims = arg(node, 1, "dim")
    if isinstance(dims, int):
        dims = [dims]
    if not dims or not isinstance(val(node), torch.Tensor):
        return freeze_and_clear(cg, node, lay, "reduces over every dim")
    dims = {norm_dim(d, rank) for d in dims}
    if lay.dim in dims:
        return freeze_and_clear(cg, node, lay, "reduces over the channels")
    keep = val(node).dim() == rank
    set_layout(
        cg, node, Layout(lay.dim if keep else lay.dim - sum(d < lay.dim for d in dims), lay.atoms)
    )


def _softmax(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is not None and norm_dim(node.args[1], val(node.args[0]).dim()) == lay.dim:
        return freeze_and_clear(cg, node, lay, "normalises over the channels")
    set_layout(cg, node, lay)


# --------------------------------------------------------------------------- layout ops


def _reshape_group(ins: tuple, outs: tuple, d: int) -> tuple[list[int], list[int]] | None:
    """The runs of input and output dims with equal products that contain input dim ``d``.

    Matched from the first dim, else from the last: a symbolic batch dim merged with
    others (GPT-2's ``x.view(-1, in)`` of a ``(batch, seq, in)`` tensor) cannot be matched
    from the left, but the channels behind it can from the right.
    """
    group = _group_from_left(ins, outs, d)
    if group is not None:
        return group
    group = _group_from_left(ins[::-1], outs[::-1], len(ins) - 1 - d)
    if group is None:
        return None
    return sorted(len(ins) - 1 - i for i in group[0]), sorted(len(outs) - 1 - j for j in group[1])


def _group_from_left(ins: tuple, outs: tuple, d: int) -> tuple[list[int], list[int]] | None:
    i = j = 0
    while i < len(ins) and j < len(outs):
        if static(ins[i]) == 1 and i != d:
            i += 1
            continue
        if static(outs[j]) == 1:
            j += 1
            continue
        dims_in, dims_out, p, q = [i], [j], static(ins[i]), static(outs[j])
        if p is None or q is None:  # a symbolic (batch) dim must map to itself
            if p is not None or q is not None or str(ins[i]) != str(outs[j]) or i == d:
                return None
            i, j = i + 1, j + 1
            continue
        while p != q:
            if p < q:
                i += 1
                if i >= len(ins) or static(ins[i]) is None:
                    return None
                p *= ins[i]
                dims_in.append(i)
            else:
                j += 1
                if j >= len(outs) or static(outs[j]) is None:
                    return None
                q *= outs[j]
                dims_out.append(j)
        if d in dims_in:
            return dims_in, dims_out
        i, j = i + 1, j + 1
    return None


def _reshape(cg: ChannelGraph, node: Node) -> None:
    src = node.args[0]
    lay = cg.layout(src)
    if lay is None:
        return set_layout(cg, node, None)
    group = _reshape_group(tuple(val(src).shape), tuple(val(node).shape), lay.dim)
    if group is None or len(lay) == 1:
        return freeze_and_clear(
            cg, node, lay, "reshapes the channels in a way pruning can't follow"
        )
    dims_in, dims_out = group
    in_sizes = [int(val(src).shape[i]) for i in dims_in]
    out_sizes = [int(val(node).shape[j]) for j in dims_out]
    vec = np.asarray(lay.atoms, dtype=np.int64).reshape(
        [-1 if i == lay.dim else 1 for i in dims_in]
    )
    arr = np.broadcast_to(vec, in_sizes).reshape(out_sizes)
    uniq, inverse = np.unique(arr, return_inverse=True)
    classes = np.asarray([cg.find(int(a)) for a in uniq])[inverse].reshape(arr.shape)
    varying = [k for k in range(arr.ndim) if (classes != np.take(classes, [0], axis=k)).any()]
    if not varying:
        return freeze_and_clear(cg, node, lay, "spreads one channel over the whole tensor")
    k0 = _unit_axis(node, arr.shape, varying, dims_out)
    blocks = np.moveaxis(arr, k0, 0).reshape(arr.shape[k0], -1)
    if len(varying) > 1:  # channels split into blocks (e.g. heads): a block goes as a whole
        for block in blocks:
            cg.union_all(block.tolist(), via=f"{node.name} (channel blocks)")
    out_dim = dims_out[k0]
    new = Layout(out_dim, tuple(int(a) for a in blocks[:, 0]))
    sizes, offset = _size_constants(node)
    if sizes is not None and 0 <= out_dim - offset < len(sizes):
        entry = sizes[out_dim - offset]
        if isinstance(entry, int) and entry >= 0:
            cg.record(node, "shape", new.atoms, detail=(out_dim - offset,))
        elif entry != -1:
            cg.freeze(lay.atoms, why(node, "sets the channel count from a computed size"))
    set_layout(cg, node, new)


def _reshape_as(cg: ChannelGraph, node: Node) -> None:
    """``x.reshape_as(other)``: ``reshape`` to ``other``'s shape, read at run time.

    Nothing to rewrite, but ``other`` must shrink with ``x``: its channels must sit where
    ``x``'s land, and they are coupled; an ``other`` without channels there fixes their count.
    """
    other = node.args[1]
    _reshape(cg, node)
    new, lay = cg.layout(node), cg.layout(other)
    if new is None:
        return
    if lay is None or lay.dim != new.dim or len(lay) != len(new):
        cg.freeze(new.atoms, why(node, "takes their count from a tensor with other channels"))
        return set_layout(cg, node, None)
    cg.couple(new, lay, via=node.name)


def _unit_axis(node: Node, shape: tuple, varying: list[int], dims_out: list[int]) -> int:
    """Which axis of a channel split numbers the units (the others are coupled blocks).

    The first (outer) one: for heads, unit = head. A channel shuffle (ShuffleNet: split into
    ``(g, C/g)``, swap the two, merge) is exact either way, pruning whole groups or the same
    channel of every group; the axis with more entries gives the finer units (ShuffleNetV2's
    ``g = 2`` would otherwise leave two units of C/2 channels).
    """
    if len(varying) != 2:
        return varying[0]
    a, b = (dims_out[k] for k in varying)
    users = list(node.users)
    if len(users) == 1 and users[0].op == "call_function" and _swaps(users[0], a, b):
        return max(varying, key=lambda k: (shape[k], -k))
    return varying[0]


def _swaps(node: Node, a: int, b: int) -> bool:
    """True when ``node`` is a transpose/permute that exchanges dims ``a`` and ``b``."""
    packet = getattr(node.target, "overloadpacket", None)
    rank = val(node).dim() if isinstance(val(node), torch.Tensor) else 0
    if packet is aten.transpose:
        return {norm_dim(x, rank) for x in node.args[1:3]} == {a, b}
    if packet is aten.permute:
        order = [norm_dim(x, rank) for x in node.args[1]]
        moved = [k for k, o in enumerate(order) if o != k]
        return sorted(moved) == sorted((a, b)) and order[a] == b
    return False


def _size_constants(node: Node) -> tuple[list | None, int]:
    """The size list of a view-like node and the output dim its first entry describes."""
    packet = node.target.overloadpacket
    if packet in (aten.view, aten.reshape, aten._unsafe_view):
        return list(node.args[1]), 0
    if packet is aten.unflatten:
        return list(node.args[2]), norm_dim(node.args[1], val(node.args[0]).dim())
    return None, 0


def _permute(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is None:
        return set_layout(cg, node, None)
    rank = val(node).dim()
    packet = node.target.overloadpacket
    if packet is aten.permute:
        order = [norm_dim(d, rank) for d in node.args[1]]
    elif packet is aten.t:  # 0-d, 1-d or 2-d
        order = list(range(rank))[::-1]
    else:
        order = list(range(rank))
        a, b = (norm_dim(x, rank) for x in node.args[1:3])
        order[a], order[b] = order[b], order[a]
    set_layout(cg, node, Layout(order.index(lay.dim), lay.atoms))


def _select(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is None:
        return set_layout(cg, node, None)
    dim = norm_dim(node.args[1], val(node.args[0]).dim())
    if dim == lay.dim:
        return freeze_and_clear(cg, node, lay, "selects one channel")
    set_layout(cg, node, Layout(lay.dim - (dim < lay.dim), lay.atoms))


def _slice(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is None:
        return set_layout(cg, node, None)
    dim = norm_dim(arg(node, 1, "dim", 0), val(node.args[0]).dim())
    start, end, step = arg(node, 2, "start"), arg(node, 3, "end"), arg(node, 4, "step", 1)
    whole = start in (None, 0) and step == 1 and (end is None or (static(end) or 0) >= len(lay))
    if dim == lay.dim and not whole:
        return freeze_and_clear(cg, node, lay, "slices the channels")
    set_layout(cg, node, lay)


def _cat(cg: ChannelGraph, node: Node) -> None:
    tensors = [t for t in node.args[0] if isinstance(val(t), torch.Tensor)]
    rank = val(node).dim()
    dim = norm_dim(arg(node, 1, "dim", 0), rank)
    lays = [cg.layout(t) for t in tensors]
    if all(lay is None for lay in lays):
        return set_layout(cg, node, None)
    if any(lay is not None and lay.dim == dim for lay in lays):
        for lay in lays:
            if lay is not None and lay.dim != dim:
                cg.freeze(lay.atoms, why(node, "joins tensors with channels on other dims"))
        atoms = tuple(a for t in tensors for a in cg.layout_on(t, dim))
        return set_layout(cg, node, Layout(dim, atoms))
    _elementwise(cg, node)  # joined along another dim: channels must line up


def _split(cg: ChannelGraph, node: Node) -> None:
    src = node.args[0]
    lay, outs = cg.layout(src), val(node)
    packet = node.target.overloadpacket
    dim = norm_dim(arg(node, 1 if packet is aten.unbind else 2, "dim", 0), val(src).dim())
    if lay is None:
        cg.layouts[node] = [None] * len(outs)
    elif lay.dim != dim:
        new_dim = lay.dim - (packet is aten.unbind and dim < lay.dim)
        cg.layouts[node] = [Layout(new_dim, lay.atoms)] * len(outs)
    elif packet is aten.unbind:
        cg.freeze(lay.atoms, why(node, "unbinds the channels"))
        cg.layouts[node] = [None] * len(outs)
    else:
        sizes = [int(o.shape[dim]) for o in outs]
        starts = itertools.accumulate(sizes, initial=0)
        chunks = [Layout(dim, lay.atoms[s:e]) for s, e in itertools.pairwise(starts)]
        for chunk in chunks:
            cg.freeze(chunk.atoms[:1], why(node, "keeps one channel per chunk"))
        cg.record(node, "split", lay.atoms, detail=tuple(sizes))
        cg.layouts[node] = chunks


def _sym_size(cg: ChannelGraph, node: Node) -> None:
    lay = cg.layout(node.args[0])
    if lay is not None and norm_dim(node.args[1], val(node.args[0]).dim()) == lay.dim:
        cg.freeze(lay.atoms, why(node, "reads the channel count"))
    cg.layouts[node] = None


# --------------------------------------------------------------------------- the table


def _packets(names: str) -> list[object]:
    return [getattr(aten, n) for n in names.split() if hasattr(aten, n)]


_ELEMENTWISE = _packets(
    "relu relu_ relu6 hardtanh hardtanh_ gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ "
    "hardswish hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ mish mish_ "
    "softplus dropout dropout_ feature_dropout feature_dropout_ alpha_dropout alpha_dropout_ "
    "clone contiguous alias detach _to_copy to "
    "type_as add add_ sub sub_ mul mul_ div div_ neg abs exp log sqrt rsqrt pow erf clamp "
    "clamp_ clamp_min clamp_max where masked_fill reciprocal square maximum minimum"
)
_SPATIAL = {
    **dict.fromkeys(
        _packets(
            "max_pool1d max_pool1d_with_indices avg_pool1d adaptive_avg_pool1d "
            "adaptive_max_pool1d upsample_nearest1d _upsample_nearest_exact1d upsample_linear1d"
        ),
        1,
    ),
    **dict.fromkeys(
        _packets(
            "max_pool2d max_pool2d_with_indices avg_pool2d adaptive_avg_pool2d "
            "_adaptive_avg_pool2d adaptive_max_pool2d upsample_nearest2d "
            "_upsample_nearest_exact2d upsample_bilinear2d _upsample_bilinear2d_aa "
            "upsample_bicubic2d _upsample_bicubic2d_aa"
        ),
        2,
    ),
    **dict.fromkeys(
        _packets(
            "max_pool3d max_pool3d_with_indices avg_pool3d adaptive_avg_pool3d "
            "adaptive_max_pool3d upsample_nearest3d _upsample_nearest_exact3d "
            "upsample_trilinear3d"
        ),
        3,
    ),
}
# ops a per-channel parameter passes through on its way to an elementwise op, unchanged but
# for new size-1 or broadcast dims (a layer scale ``gamma.unsqueeze(-1).unsqueeze(-1)``, a
# class token ``cls.expand(batch, -1, -1)``) or its dtype (``_parameter_behind``)
_PARAMETER_VIEWS = frozenset(
    _packets("unsqueeze expand _to_copy to type_as clone contiguous detach alias")
)
_PADS = _packets(
    "pad constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d "
    "replication_pad1d replication_pad2d replication_pad3d"
)

_RULES: dict[object, Rule] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **{p: _spatial(k) for p, k in _SPATIAL.items()},
    **dict.fromkeys(_PADS, _pad),
    **dict.fromkeys(_packets("pixel_shuffle pixel_unshuffle"), _pixel_shuffle),
    **dict.fromkeys(_packets("_assert_tensor_metadata"), _assert_metadata),
    **dict.fromkeys(_packets("mean sum amax amin"), _reduction),
    **dict.fromkeys(_packets("softmax _softmax log_softmax _log_softmax"), _softmax),
    **dict.fromkeys(
        _packets("view reshape _unsafe_view flatten unflatten squeeze unsqueeze"), _reshape
    ),
    **dict.fromkeys(_packets("reshape_as view_as"), _reshape_as),
    **dict.fromkeys(_packets("permute transpose t"), _permute),
    aten.select: _select,
    aten.slice: _slice,
    aten.cat: _cat,
    **dict.fromkeys(_packets("split split_with_sizes chunk unbind"), _split),
    **dict.fromkeys(
        _packets(
            "conv1d conv2d conv3d convolution conv_transpose1d conv_transpose2d conv_transpose3d"
        ),
        conv_rule,
    ),
    aten.linear: linear_rule,
    **dict.fromkeys(_packets("mm addmm matmul bmm einsum"), matmul_rule),
    aten.embedding: embedding_rule,
    **dict.fromkeys(
        _packets("batch_norm _native_batch_norm_legit_no_training native_batch_norm"),
        batch_norm_rule,
    ),
    aten.instance_norm: instance_norm_rule,
    aten.prelu: prelu_rule,
    aten.layer_norm: layer_norm_rule,
    aten.group_norm: group_norm_rule,
    aten.scaled_dot_product_attention: attention_rule,
    aten.index: index_rule,
    aten.roll: _roll,
    aten.expand: _expand,
    aten.sym_size: _sym_size,
}
