"""Channel importance: a score per unit of each group (low scores are pruned first).

Per member (one layer's share of a group) a unit's score is

    l1        Σ |w|   over the weight slices the unit owns (conv/linear rows of ``out``,
              columns of ``in``, the transposed/``x @ W`` layouts as their records say, a
              grouped transposed conv's input rows, the norm layer's γ)
    l2        sqrt(Σ w²) over the same slices
    bn_scale  Σ |γ| of the group's BatchNorms (network slimming); a group without a
              BatchNorm falls back to l2 (listed in ``fallbacks``, like a group whose
              weights got no gradient under taylor)
    taylor    |Σ w · ∂L/∂w| over the same slices (first-order Taylor estimate of the loss
              change when the unit is removed), with L = ½‖f(x)‖² / numel on the example
              inputs: no labels are needed, and L measures how much the unit moves the output
    random    uniform, seeded by the group id (a baseline)

Layers differ in scale (a 3×3×512 filter has a larger norm than a BN γ), so each member's
scores are divided by their mean over the group's units before aggregation (per-layer
normalisation); then ``sum``, ``mean`` or ``max`` over members gives the group's score. A
unit that owns no position in a member is left out of that member's aggregation.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor
from graphopt.pruning.dependency import NO_DIM, layer_parameters
from graphopt.pruning.groups import Member, PruningGroup

__all__ = ["AGGREGATES", "METHODS", "compute_importance", "member_scores"]

METHODS = ("l1", "l2", "bn_scale", "taylor", "random")
AGGREGATES = ("sum", "mean", "max")
_WEIGHT_ROLES = ("out", "in", "norm", "groups")
_BN = ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")


def compute_importance(
    gm: GraphModule,
    groups: Iterable[PruningGroup],
    method: str = "l2",
    aggregate: str = "mean",
    *,
    example_inputs: Sequence[torch.Tensor] = (),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Scores per group id (float64, one per unit) and the ids that fell back to l2."""
    if method not in METHODS:
        raise ValueError(f"importance must be one of {', '.join(METHODS)}, got {method!r}")
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    nodes = {n.name: n for n in gm.graph.nodes}
    grads = _gradients(gm, example_inputs) if method == "taylor" else {}
    scores, fallbacks = {}, []
    for group in groups:
        if method == "random":
            gen = torch.Generator().manual_seed(zlib.crc32(group.id.encode()))
            scores[group.id] = torch.rand(group.num_units, generator=gen, dtype=torch.float64)
            continue
        rows = [
            r
            for m in group.members
            if (r := member_scores(gm, nodes[m.node], m, group.num_units, method, grads))
            is not None
        ]
        if not rows and method in ("bn_scale", "taylor"):
            fallbacks.append(group.id)
            rows = [
                r
                for m in group.members
                if (r := member_scores(gm, nodes[m.node], m, group.num_units, "l2", grads))
                is not None
            ]
        scores[group.id] = _aggregate(rows, group.num_units, aggregate)
    return scores, fallbacks


def member_scores(
    gm: GraphModule,
    node: Node,
    member: Member,
    num_units: int,
    method: str,
    grads: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor | None:
    """Raw per-unit scores of one member (NaN for units it does not hold), or None."""
    found = _weight(gm, node, member)
    if found is None or (method == "bn_scale" and (member.role != "norm" or not _is_bn(node))):
        return None
    tensor, dim, target = found
    # per position along ``dim``: reduce the other dims instead of moving a float64 copy of
    # the weight to the front (a ResNet-50's weights are read twice, as rows and as columns);
    # the elementwise term is computed in float32 (or float64), the sum accumulates in float64
    w = tensor.detach() if tensor.dtype == torch.float64 else tensor.detach().float()
    others = [d for d in range(w.dim()) if d != dim]
    if method == "taylor":
        grad = (grads or {}).get(target)
        if grad is None:
            return None
        term = w * grad.to(w.dtype)
    else:
        term = w.abs() if method in ("l1", "bn_scale") else w.square()
    per_pos = term.sum(others, dtype=torch.float64) if others else term.to(torch.float64)
    lengths = torch.tensor([len(p) for p in member.indices], dtype=torch.long)
    units = torch.repeat_interleave(torch.arange(len(member.indices)), lengths)
    positions = torch.tensor([p for ps in member.indices for p in ps], dtype=torch.long)
    totals = torch.zeros(num_units, dtype=torch.float64).index_add_(0, units, per_pos[positions])
    counts = torch.bincount(units, minlength=num_units)
    if method == "l2":
        totals = totals.sqrt()
    elif method == "taylor":
        totals = totals.abs()
    return torch.where(counts > 0, totals, torch.nan)


def _aggregate(rows: list[torch.Tensor], num_units: int, how: str) -> torch.Tensor:
    if not rows:
        return torch.zeros(num_units, dtype=torch.float64)
    stacked = torch.stack(rows)
    mean = stacked.nanmean(1, keepdim=True)
    stacked = torch.where(mean > 0, stacked / mean, stacked)
    if how == "sum":
        out = stacked.nansum(0)
    elif how == "mean":
        out = stacked.nanmean(0)
    else:
        out = torch.where(stacked.isnan(), -torch.inf, stacked).amax(0)
    return torch.nan_to_num(out, nan=0.0, neginf=0.0)


def _weight(gm: GraphModule, node: Node, member: Member) -> tuple | None:
    """(tensor, dim, attribute name) of the weight slice a member's positions index.

    ``out`` and ``in`` members carry their weight dim in ``detail`` (see
    ``graphopt.pruning.layer_rules``): conv rows, transposed-conv or ``x @ W`` columns, …
    A grouped transposed conv's outputs index a per-group dim (no score there); its
    ``groups`` member indexes the weight rows of each group's inputs instead.
    """
    if member.role not in _WEIGHT_ROLES:
        return None
    packet = getattr(node.target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if member.role in ("out", "in"):
        attr, dim = layer_parameters(node)[0], member.detail[0] if member.detail else NO_DIM
    elif member.role == "groups":
        attr, dim = node.args[1], member.detail[1] if len(member.detail) > 1 else NO_DIM
    elif name in ("layer_norm", "group_norm"):
        attr, dim = node.args[2] if len(node.args) > 2 else None, 0
    else:
        attr, dim = node.args[1], 0
    tensor = get_tensor(gm, attr)
    return None if tensor is None or dim == NO_DIM else (tensor, dim, str(attr.target))


def _is_bn(node: Node) -> bool:
    return getattr(getattr(node.target, "overloadpacket", None), "__name__", "") in _BN


def _gradients(gm: GraphModule, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """∂L/∂w for every parameter, L = ½‖f(x)‖² / numel on the example inputs."""
    if not inputs:
        raise ValueError("importance='taylor' needs example inputs to compute gradients")
    params = dict(gm.named_parameters())
    saved = {name: (p.requires_grad, p.grad) for name, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            outputs = gm(*inputs)
            leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if torch.is_tensor(t)]
            loss = sum(0.5 * t.float().square().mean() for t in leaves if t.is_floating_point())
            if isinstance(loss, torch.Tensor) and loss.requires_grad:
                loss.backward()
        return {n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None}
    finally:  # the model's own gradient state is left as it was
        for name, p in params.items():
            p.requires_grad_(saved[name][0])
            p.grad = saved[name][1]
