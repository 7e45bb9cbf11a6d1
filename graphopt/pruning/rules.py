"""Op rules of the channel analysis: how each ATen op moves, couples or freezes channels.

Each rule reads the layouts of a node's inputs (see ``graphopt.pruning.dependency``), sets the
layout of its output, couples or freezes atoms, and records what a rewrite must touch.

==========================  ===============================================================
op                          rule
==========================  ===============================================================
conv1d/2d/3d, convolution   output channels are a new source (``out``); a dense conv's input
                            channels are its weight's columns (``in``); a grouped/depthwise
                            conv couples group ``g``'s input and output channels, so whole
                            groups go and ``groups`` shrinks (``groups``). Transposed: unknown
linear                      new source on the last dim (``out``); input features (``in``)
embedding                   new source: the embedding dimension (``out``)
batch_norm, layer_norm,     follow their channels (``norm``); group_norm couples each group
group_norm                  (whole groups go, ``num_groups`` shrinks); a LayerNorm over
                            several dims that include the channels freezes them
elementwise (relu(_),       pass channels through; operands broadcast from the right; two
hardtanh(_), gelu, silu,    operands with channels on the same dim are coupled position by
dropout, add, mul, …)       position (residual add, squeeze-excite mul); an operand without
                            channels but full-size on that dim freezes them
pools, upsampling, padding  pass channels if the channel dim is not a spatial dim
mean/sum/amax/amin          pass channels unless reduced over; softmax: unless along them
view/reshape/flatten/       follow positions through the reshape; a merge with spatial dims
unflatten/(un)squeeze       repeats a channel's atom (flatten → linear); a split into blocks
                            couples each block (heads); size constants recorded (``shape``)
permute/transpose/t,        move the channel dim; select/slice along it freeze it (a full
select, slice               slice passes)
cat                         along the channel dim: concatenates atoms (graph inputs and other
                            fixed tensors get frozen atoms); along another dim: couples
split/chunk/unbind          along the channel dim: slices atoms, sizes recorded (``split``);
                            the first channel of every chunk is frozen so no chunk empties
scaled_dot_product_attn.    q, k, v heads (dim −3) coupled head by head (``heads``); channels
                            on the head dim (−1) or a per-head mask freeze them
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
    layer_norm_rule,
    linear_rule,
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
    for a in tensors:
        value, lay = val(a), cg.layout(a)
        ad = d - (rank - value.dim())
        full = ad >= 0 and static(value.shape[ad]) == size
        if lay is not None and full:
            coupled.append(lay)
        elif lay is not None:
            cg.freeze(lay.atoms, why(node, "broadcasts a channel tensor"))
        elif full and size != 1:
            fixed.append(a)
    if fixed or not coupled:
        for lay in coupled:
            cg.freeze(lay.atoms, why(node, f"combines them with {fixed[0].name}, fixed size"))
        return set_layout(cg, node, None)
    for other in coupled[1:]:
        cg.couple(coupled[0], other, via=node.name)
    set_layout(cg, node, coupled[0])


def _spatial(count: int | None) -> Rule:
    """Pools, upsampling and padding act on the last ``count`` dims only."""

    def rule(cg: ChannelGraph, node: Node) -> None:
        lay = cg.layout(node.args[0])
        if lay is None:
            return set_layout(cg, node, None)
        k = count if count is not None else len(node.args[1]) // 2  # constant_pad_nd
        if lay.dim >= val(node.args[0]).dim() - k:
            return freeze_and_clear(cg, node, lay, "acts on the channel dim")
        set_layout(cg, node, lay)

    return rule


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
    """The runs of input and output dims with equal products that contain input dim ``d``."""
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
    k0 = varying[0]
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
    "softplus dropout feature_dropout alpha_dropout clone contiguous alias detach _to_copy to "
    "type_as add add_ sub sub_ mul mul_ div div_ neg abs exp log sqrt rsqrt pow erf clamp "
    "clamp_ clamp_min clamp_max where masked_fill reciprocal square maximum minimum"
)
_SPATIAL = {
    **{p: 1 for p in _packets("max_pool1d avg_pool1d adaptive_avg_pool1d adaptive_max_pool1d")},
    **{p: 1 for p in _packets("upsample_nearest1d upsample_linear1d reflection_pad1d")},
    **{p: 1 for p in _packets("replication_pad1d")},
    **{p: 2 for p in _packets("max_pool2d avg_pool2d adaptive_avg_pool2d adaptive_max_pool2d")},
    **{p: 2 for p in _packets("_adaptive_avg_pool2d max_pool2d_with_indices upsample_nearest2d")},
    **{p: 2 for p in _packets("upsample_bilinear2d reflection_pad2d replication_pad2d")},
    **{p: 3 for p in _packets("max_pool3d avg_pool3d adaptive_avg_pool3d upsample_nearest3d")},
    **{p: None for p in _packets("constant_pad_nd")},
}

_RULES: dict[object, Rule] = {
    **dict.fromkeys(_ELEMENTWISE, _elementwise),
    **{p: _spatial(k) for p, k in _SPATIAL.items()},
    **dict.fromkeys(_packets("mean sum amax amin"), _reduction),
    **dict.fromkeys(_packets("softmax _softmax log_softmax _log_softmax"), _softmax),
    **dict.fromkeys(
        _packets("view reshape _unsafe_view flatten unflatten squeeze unsqueeze"), _reshape
    ),
    **dict.fromkeys(_packets("permute transpose t"), _permute),
    aten.select: _select,
    aten.slice: _slice,
    aten.cat: _cat,
    **dict.fromkeys(_packets("split split_with_sizes chunk unbind"), _split),
    **dict.fromkeys(_packets("conv1d conv2d conv3d convolution"), conv_rule),
    aten.linear: linear_rule,
    aten.embedding: embedding_rule,
    **dict.fromkeys(
        _packets("batch_norm _native_batch_norm_legit_no_training native_batch_norm"),
        batch_norm_rule,
    ),
    aten.layer_norm: layer_norm_rule,
    aten.group_norm: group_norm_rule,
    aten.scaled_dot_product_attention: attention_rule,
    aten.sym_size: _sym_size,
}
