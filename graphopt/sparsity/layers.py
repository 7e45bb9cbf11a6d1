"""The weights that weight-level compression (``sparsify``, ``cluster``) rewrites.

A candidate is a ``conv1d``/``conv2d``/``conv3d`` or ``linear`` whose weight is a float
``get_attr`` parameter read by that layer alone. Everything else is a refusal with the reason:
a weight computed by other nodes (already clustered, or dequantized from int8), an integer
buffer, a tensor shared by two layers (a tied embedding and head: compressing it for one would
change the other), a layer in ``skip``. ``check_names`` makes a ``skip`` entry that matches no
layer an error, so a typo never leaves a layer silently uncompressed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from graphopt.errors import PassError
from graphopt.ir import get_tensor, is_op, iter_ops, module_path
from graphopt.passes.base import Refusal

__all__ = ["LAYER_OPS", "WeightRef", "check_names", "find_weights"]

aten = torch.ops.aten
LAYER_OPS = (aten.conv1d, aten.conv2d, aten.conv3d, aten.linear)


@dataclass(frozen=True)
class WeightRef:
    """One layer's weight: the layer node, its module path, the weight's attribute target."""

    node: str
    path: str
    target: str
    kind: str  # "conv" or "linear"
    groups: int

    @property
    def where(self) -> str:
        return self.path or self.node


def find_weights(
    gm: GraphModule, skip: Sequence[str] = (), *, marker: str | None = None
) -> tuple[list[WeightRef], list[Refusal]]:
    """Every candidate weight in graph order, and the refused layers with the reason.

    ``marker``: a ``node.meta`` key that earlier runs of a pass put on the weight they wrote
    (the codebook lookup), so a second run refuses it as "already done" by name.
    """
    layers = list(iter_ops(gm, LAYER_OPS))
    uses = Counter(
        str(n.args[1].target) for n in layers if isinstance(n.args[1], Node) and _is_attr(n.args[1])
    )
    found: list[WeightRef] = []
    refused: list[Refusal] = []
    for node in layers:
        path = module_path(node)
        where = path or node.name
        weight_node = node.args[1] if len(node.args) > 1 else None
        if _skipped(path, skip):
            refused.append(Refusal(where, "in skip"))
            continue
        if isinstance(weight_node, Node) and marker is not None and marker in weight_node.meta:
            refused.append(Refusal(where, "already done: its weight is a codebook lookup"))
            continue
        tensor = get_tensor(gm, weight_node) if isinstance(weight_node, Node) else None
        if tensor is None:
            refused.append(
                Refusal(where, "weight is computed by other nodes (clustered or dequantized)")
            )
            continue
        if not tensor.is_floating_point():
            refused.append(Refusal(where, f"weight is {tensor.dtype}, not a float parameter"))
            continue
        target = str(weight_node.target)
        if uses[target] > 1 or len(weight_node.users) > 1:
            refused.append(Refusal(where, f"weight {target} is shared with another layer"))
            continue
        kind = "linear" if is_op(node, (aten.linear,)) else "conv"
        groups = int(node.args[6]) if kind == "conv" and len(node.args) > 6 else 1
        found.append(WeightRef(node.name, path, target, kind, groups))
    return found, refused


def check_names(
    gm: GraphModule,
    pass_name: str,
    option: str,
    names: Sequence[str],
    *,
    extra_ops: Sequence[object] = (),
) -> None:
    """A ``PassError`` for an entry of ``option`` that names no conv/linear layer (nor a
    layer of ``extra_ops``, e.g. ``addmm`` for a pass that takes HF ``Conv1D``)."""
    paths = {module_path(n) for n in iter_ops(gm, (*LAYER_OPS, *extra_ops))}
    for name in names:
        if name not in paths and not any(p.startswith(name + ".") for p in paths):
            example = ", ".join(sorted(p for p in paths if p)[:5]) or "(no named layers)"
            raise PassError(
                pass_name,
                f"{option} entry {name!r} matches no conv/linear layer; layers are named like "
                f"{example}",
            )


def _skipped(path: str, skip: Sequence[str]) -> bool:
    return any(path == s or path.startswith(s + ".") for s in skip)


def _is_attr(node: Node) -> bool:
    return node.op == "get_attr"
