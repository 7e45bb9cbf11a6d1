"""Surgery: stateless functions that cut channels out of one node, and the dispatcher.

Each function takes the GraphModule, one node and the sorted positions to *keep* along that
node's channel dimension, and rewrites exactly that node: parameters are sliced (really
smaller, not masked), and size constants that name the channel count are updated.

===========  =================================================================================
role         rewrite
===========  =================================================================================
out          the weight's output dim and the bias (``detail``: their dims, see
             ``graphopt.pruning.layer_rules``): conv/linear rows, transposed conv and ``x @ W``
             columns, embedding columns; a grouped transposed conv cuts only its bias here
in           the weight's input dim: conv/linear columns, transposed conv and ``x @ W`` rows
norm         BatchNorm and InstanceNorm weight, bias, running mean and variance (those
             present); LayerNorm weight, bias and ``normalized_shape``; GroupNorm weight,
             bias and ``num_groups`` (whole groups go)
channelwise  a channel-wise op's per-channel parameter operand: PReLU's slopes, a bias or
             scale added or multiplied by hand (``x @ w + b``, a layer scale)
groups       a grouped conv's ``groups``: kept input channels / input channels per group (a
             conv's weight dim 1 is per group and does not change; a transposed conv's dim 0
             holds every group's inputs and is cut)
shape        the size constant of a view/reshape/unflatten/expand at the channel dim
split        split/chunk → ``split_with_sizes`` with each chunk's kept count
heads        nothing: attention reads the head count from q, k, v
===========  =================================================================================

A tied parameter (one tensor several nodes read, see ``graphopt.pruning.dependency``) is cut
by its first user; the others find it already at the kept size and leave it, and every name
the tensor is registered under (``wte.weight`` and ``lm_head.weight``) then points at the one
sliced tensor: the tie survives.

``apply_removals`` gathers, for every (node, role), the positions that the removed units of
all groups own there and calls the matching function once. The caller recompiles and
re-propagates shapes afterwards (the pass manager does, after every pass).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Mapping

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor, set_tensor
from graphopt.pruning.dependency import NO_DIM, layer_parameters
from graphopt.pruning.groups import PruningGroup

__all__ = [
    "SURGERY",
    "apply_removals",
    "prune_channelwise",
    "prune_groups_arg",
    "prune_input_channels",
    "prune_norm",
    "prune_output_channels",
    "resize_shape",
    "resize_split",
    "slice_attribute",
]

aten = torch.ops.aten
Surgery = Callable[[GraphModule, Node, torch.Tensor, tuple[int, ...]], None]


def slice_attribute(gm: GraphModule, attr: object, dim: int, keep: torch.Tensor) -> None:
    """Replace the parameter/buffer behind ``get_attr`` node ``attr`` by its ``keep`` slice.

    A tensor already ``len(keep)`` long on ``dim`` is left as it is: ``keep`` indexes the
    original length, so it was cut by another user of a tied parameter (or nothing goes).
    """
    tensor = get_tensor(gm, attr)
    if tensor is None or dim == NO_DIM or tensor.shape[dim] == len(keep):
        return
    target = str(attr.target)
    owner, leaf = _owner(gm, target)
    is_parameter = leaf in owner._parameters
    requires_grad = tensor.requires_grad
    fresh = tensor.detach().index_select(dim, keep)  # a new tensor: no second copy
    set_tensor(gm, target, fresh, parameter=is_parameter, copy=False)
    if is_parameter:
        getattr(owner, leaf).requires_grad_(requires_grad)


def _owner(gm: GraphModule, target: str) -> tuple[torch.nn.Module, str]:
    owner_path, _, leaf = target.rpartition(".")
    return (gm.get_submodule(owner_path) if owner_path else gm), leaf


def _tied_names(gm: GraphModule) -> list[tuple[torch.Tensor, list[str]]]:
    """Tensors registered under several names (a tied embedding and LM head), and the names."""
    names: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for name, t in itertools.chain(
        gm.named_parameters(remove_duplicate=False), gm.named_buffers(remove_duplicate=False)
    ):
        names.setdefault(id(t), (t, []))[1].append(name)
    return [entry for entry in names.values() if len(entry[1]) > 1]


def _retie(gm: GraphModule, tied: list[tuple[torch.Tensor, list[str]]]) -> None:
    """Point every name of a tied tensor at its sliced version, so the tie (and the
    parameter count) survives: the surgery replaced the tensor under the names it used."""
    for original, names in tied:
        owners = [_owner(gm, name) for name in names]
        current = [getattr(owner, leaf) for owner, leaf in owners]
        sliced = next((t for t in current if t is not original), None)
        if sliced is None:
            continue
        for owner, leaf in owners:
            table = owner._parameters if leaf in owner._parameters else owner._buffers
            table[leaf] = sliced


def prune_output_channels(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """A layer's output channels: ``detail`` = (weight dim, bias dim), NO_DIM: left whole."""
    weight, bias = layer_parameters(node)
    w_dim, b_dim = detail
    slice_attribute(gm, weight, w_dim, keep)
    slice_attribute(gm, bias, b_dim, keep)


def prune_input_channels(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """A dense layer's input channels: ``detail`` = (weight dim,)."""
    slice_attribute(gm, layer_parameters(node)[0], detail[0], keep)


def prune_norm(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """Batch/InstanceNorm (4 tensors), LayerNorm (+ normalized_shape), GroupNorm (+ groups)."""
    packet = node.target.overloadpacket
    args = list(node.args)
    if packet is aten.layer_norm:
        tensors = args[2:4]
        args[1] = [len(keep)]
    elif packet is aten.group_norm:
        tensors = args[2:4]
        args[1] = len(keep) // detail[0]
    else:
        tensors = args[1:5]
    for attr in tensors:
        slice_attribute(gm, attr, 0, keep)
    node.args = tuple(args)


def prune_channelwise(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """A per-channel parameter operand: ``detail`` = (its index in ``args``, its channel dim)."""
    slice_attribute(gm, node.args[detail[0]], detail[1], keep)


def prune_groups_arg(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """A grouped conv loses whole groups: ``groups`` = kept input channels / per group.

    ``detail`` = (input channels per group, the weight dim holding every group's inputs or
    NO_DIM): a transposed conv's weight ``[in, out/groups, k…]`` loses those rows here.
    """
    slice_attribute(gm, node.args[1], detail[1], keep)
    index = 8 if node.target.overloadpacket is aten.convolution else 6
    groups = len(keep) // detail[0]
    if len(node.args) > index:
        args = list(node.args)
        args[index] = groups
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, "groups": groups}


def resize_shape(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """The view/reshape/unflatten/expand size constant at the channel dim: the kept count."""
    index = 2 if node.target.overloadpacket is aten.unflatten else 1
    args = list(node.args)
    sizes = list(args[index])
    sizes[detail[0]] = len(keep)
    args[index] = sizes
    node.args = tuple(args)


def resize_split(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """Split/chunk along the channels becomes ``split_with_sizes`` of the kept counts."""
    bounds, start = [], 0
    for size in detail:
        bounds.append((start, start + size))
        start += size
    sizes = [int(((keep >= lo) & (keep < hi)).sum()) for lo, hi in bounds]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    node.target = aten.split_with_sizes.default
    node.args, node.kwargs = (node.args[0], sizes, dim), {}


def _nothing(gm: GraphModule, node: Node, keep: torch.Tensor, detail: tuple) -> None:
    """Attention reads its head count from q, k and v."""


SURGERY: dict[str, Surgery] = {
    "out": prune_output_channels,
    "in": prune_input_channels,
    "norm": prune_norm,
    "channelwise": prune_channelwise,
    "groups": prune_groups_arg,
    "shape": resize_shape,
    "split": resize_split,
    "heads": _nothing,
}


def removed_positions(
    groups: Iterable[PruningGroup], removals: Mapping[str, Collection[int]]
) -> dict[tuple[str, str], tuple[int, tuple[int, ...], set[int]]]:
    """(node, role) → (size, detail, positions owned by removed units of every group)."""
    out: dict[tuple[str, str], tuple[int, tuple[int, ...], set[int]]] = {}
    for group in groups:
        units = removals.get(group.id, ())
        if not units:
            continue
        for m in group.members:
            _, _, positions = out.setdefault((m.node, m.role), (m.size, m.detail, set()))
            for u in units:
                positions.update(m.indices[u])
    return out


def apply_removals(
    gm: GraphModule, groups: Iterable[PruningGroup], removals: Mapping[str, Collection[int]]
) -> int:
    """Remove the given units of each group from ``gm`` in place; returns nodes rewritten."""
    nodes = {n.name: n for n in gm.graph.nodes}
    tied = _tied_names(gm)
    rewritten = 0
    for (name, role), (size, detail, positions) in removed_positions(groups, removals).items():
        if not positions:
            continue
        keep = torch.tensor(sorted(set(range(size)) - positions), dtype=torch.long)
        SURGERY[role](gm, nodes[name], keep, detail)
        rewritten += 1
    _retie(gm, tied)
    return rewritten
