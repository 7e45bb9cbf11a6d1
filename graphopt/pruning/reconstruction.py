"""Data-aware channel selection (``importance: reconstruction``): remove the channels whose
removal least changes what the layers reading them compute, on calibration data (ThiNet, Luo
et al. 2017).

For a group, every layer that reads its channels (an ``in`` member: a linear or a dense
conv, seen as a linear map on im2col features, see ``graphopt.pruning.refit``) contributes
its *output error*. With ``W`` the layer's weights as a matrix (``out × features``), ``H``
the mean of ``x xᵀ`` over its input feature rows on the calibration data, ``r`` weights of
the output rows (below) and ``T`` the features of the removed units, the mean squared change
of the output is

    e(T) = Σₒ rₒ W_{o,T} H_{T,T} W_{o,T}ᵀ = 1_Tᵀ P 1_T,   P = H ⊙ (Wᵀ diag(r) W),

a quadratic form in which units are removed: summing ``P`` over each unit's features gives a
units × units matrix ``Q`` (summed over the group's layers), and removing the set ``U``
costs ``Σ_{u,v∈U} Q_uv``. Selection is ThiNet's greedy: take the unit that adds the least
error given those already removed, ``Q_uu + 2 Σ_{t∈U} Q_ut``, then add its column to a
running sum. ``P`` costs one ``O(d² · out)`` product per layer; the greedy ``O(n)`` per step.
With ``refit: true`` a layer with an intercept (a bias, or a BatchNorm right after it) gets a
re-fitted one, which absorbs the mean of what was removed, so ``H`` is then the covariance.

Why not the error left *after* the re-fit (optimal brain surgeon: ``W_T (H⁻¹_TT)⁻¹ W_Tᵀ``,
with ``H⁻¹`` and ``W`` updated after every removal, as in OBC/ZipLM): measured here, it was
slower and no better. Its ``O(d²)`` update per removed unit took 33 s for one MiniLM FFN
layer's shape (1 536 units, 384 outputs, one thread) against 1.2 s for ``Q`` and this whole
greedy; and on Fashion-MNIST at 70 % of the MACs it gave 91.39 % against 91.78 % (both
re-fitted and ranked by raw error across groups, 256 calibration images): the compensated
error of the last layers, fitted on 4 096 patches for
2 304 features and 256 rows for the classifier, is an optimistic, overfitted estimate, and
the search cut the last stage to 24 of its 256 channels.

Row weights make the errors of a group's several layers comparable: for a layer followed by
an eval-mode BatchNorm, ``rₒ = γₒ² / (varₒ + ε) / Σ γ²`` (the error in the BatchNorm's output,
whose channels have variance ``γₒ²``); otherwise ``rₒ = 1 / Σₒ E[yₒ²]`` (relative to the
layer's output energy). A unit's score is the error its greedy step added, made
non-decreasing along the greedy order (a running maximum, then strictly increasing by the
smallest float step), so the policy's sort reproduces the greedy order.

Across groups the policy ranks these scores as it ranks every importance: divided by the
group's mean. Ranking the raw relative errors instead (they are on one scale) was measured
and dropped: it concentrates the pruning in a few layers (the widest ones, where one
channel is a small share of the output; MiniLM's first three FFN layers), which the re-fit
then recovers less well — Fashion-MNIST at 70 % of the MACs, re-fitted: 91.69 % against
91.97 % (output cosine with the original 0.99858 against 0.99937); MiniLM at 80 %: embedding
cosine 0.925 against 0.940 on the Lee documents.

A group read by a layer of another kind (``x @ W``, einsum, a grouped conv's ``in``, more than
``refit.MAX_FEATURES`` features) falls back to l2 (listed in ``importance_fallbacks``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch.fx import GraphModule, Interpreter, Node

from graphopt.ir import get_tensor
from graphopt.pruning.groups import Member, PruningGroup
from graphopt.pruning.importance import compute_importance
from graphopt.pruning.refit import Consumer, consumer_of, intercept_of, is_eval_batch_norm

__all__ = [
    "RECONSTRUCTION",
    "LayerStats",
    "greedy_scores",
    "layer_statistics",
    "reconstruction_scores",
    "unit_errors",
]

RECONSTRUCTION = "reconstruction"


class LayerStats:
    """Sums over the calibration rows of one layer: ``Σ x xᵀ``, ``Σ x``, ``Σ y²``, rows."""

    def __init__(self) -> None:
        self.gram: Tensor | None = None
        self.total: Tensor | None = None
        self.energy: Tensor | None = None
        self.rows = 0

    def add_inputs(self, rows: Tensor) -> None:
        gram, total = (rows.T @ rows).double(), rows.double().sum(0)  # see refit._Fit.add
        self.gram = gram if self.gram is None else self.gram + gram
        self.total = total if self.total is None else self.total + total
        self.rows += len(rows)

    def add_outputs(self, rows: Tensor) -> None:
        energy = rows.double().square().sum(0)
        self.energy = energy if self.energy is None else self.energy + energy

    def hessian(self, *, centred: bool) -> Tensor:
        """Mean ``x xᵀ``, or the covariance when ``centred``."""
        h = self.gram / self.rows
        if centred:
            mean = self.total / self.rows
            h = h - torch.outer(mean, mean)
        return (h + h.T) / 2


class _Recorder(Interpreter):
    def __init__(self, gm: GraphModule, consumers: Mapping[str, Consumer]) -> None:
        super().__init__(gm)
        self.consumers = consumers
        self.stats = {name: LayerStats() for name in consumers}

    def run_node(self, n: Node) -> object:
        consumer = self.consumers.get(n.name)
        if consumer is not None:
            self.stats[n.name].add_inputs(consumer.features(self.env[n.args[0]]))
        result = super().run_node(n)
        if consumer is not None:  # read at once: an in-place op further on may change it
            self.stats[n.name].add_outputs(consumer.outputs(result))
        return result


def layer_statistics(
    gm: GraphModule, consumers: Mapping[str, Consumer], batches: Sequence[tuple[Tensor, ...]]
) -> dict[str, LayerStats]:
    """Input and output sums of ``consumers`` over ``batches`` (one interpreted run each)."""
    recorder = _Recorder(gm, consumers)
    with torch.no_grad():
        for batch in batches:
            recorder.run(*batch)
    return recorder.stats


def reconstruction_scores(
    gm: GraphModule,
    groups: Sequence[PruningGroup],
    batches: Sequence[tuple[Tensor, ...]],
    *,
    refit: bool = False,
    aggregate: str = "mean",
) -> tuple[dict[str, Tensor], list[str]]:
    """Scores per group id (relative output error per unit, see the module docstring) and
    the ids that fell back to l2 (combined by ``aggregate``). ``refit``: intercepts will be
    re-fitted, so ``H`` is centred where a layer has one."""
    nodes = {n.name: n for n in gm.graph.nodes}
    readers: dict[str, list[tuple[Consumer, Member]]] = {}
    fallbacks = []
    for g in groups:
        if g.frozen:
            continue
        ins = [(consumer_of(nodes[m.node]), m) for m in g.members if m.role == "in"]
        if ins and all(isinstance(c, Consumer) for c, _ in ins):
            readers[g.id] = ins
        else:
            fallbacks.append(g.id)
    consumers = {c.node: c for pairs in readers.values() for c, _ in pairs}
    stats = layer_statistics(gm, consumers, batches) if consumers else {}
    scores = {g.id: torch.zeros(g.num_units, dtype=torch.float64) for g in groups}
    for g in groups:
        if g.id in readers:
            q = sum(
                unit_errors(gm, nodes[c.node], c, m, stats[c.node], g.num_units, refit=refit)
                for c, m in readers[g.id]
            )
            scores[g.id] = greedy_scores(q, g.prunable_units)
    if fallbacks:
        l2, _ = compute_importance(gm, [g for g in groups if g.id in fallbacks], "l2", aggregate)
        scores.update(l2)
    return scores, fallbacks


def unit_errors(
    gm: GraphModule,
    node: Node,
    consumer: Consumer,
    member: Member,
    stats: LayerStats,
    num_units: int,
    *,
    refit: bool = False,
) -> Tensor:
    """``Q`` of one reading layer: removing units ``U`` adds error ``Σ_{u,v∈U} Q_uv``."""
    weight = get_tensor(gm, node.args[1]).detach()
    w = weight.reshape(len(weight), -1).double()
    h = stats.hessian(centred=refit and intercept_of(node) is not None)
    p = h * (w.T @ (w * _row_weights(gm, node, stats)[:, None]))
    if consumer.width > 1:  # a channel's k² im2col features are contiguous: sum the blocks
        channels = len(p) // consumer.width
        p = p.reshape(channels, consumer.width, channels, consumer.width).sum((1, 3))
    if all(len(positions) == 1 for positions in member.indices):  # a unit is a channel
        index = torch.tensor([positions[0] for positions in member.indices])
        return p[index][:, index]
    owner = torch.zeros(num_units, len(p), dtype=torch.float64)  # unit × input channel
    for u, positions in enumerate(member.indices):
        if positions:
            owner[u, list(positions)] = 1.0
    return owner @ p @ owner.T


def greedy_scores(q: Tensor, prunable: Sequence[int]) -> Tensor:
    """ThiNet's greedy on ``Q``: per unit the error its step added, non-decreasing along the
    greedy order (units that are not ``prunable`` get more than any)."""
    n = len(q)
    alive = torch.zeros(n, dtype=torch.bool)
    alive[list(prunable)] = True
    own = q.diagonal().clone()
    cross = torch.zeros(n, dtype=torch.float64)  # Σ over removed t of Q[:, t]
    scores = torch.zeros(n, dtype=torch.float64)
    best = -math.inf
    for _ in prunable:
        added = torch.where(alive, own + 2 * cross, torch.inf)
        unit = int(added.argmin())
        best = max(float(added[unit]), math.nextafter(best, math.inf), 0.0)
        scores[unit] = best
        alive[unit] = False
        cross += q[:, unit]
    scores[~torch.isin(torch.arange(n), torch.tensor(list(prunable), dtype=torch.long))] = (
        max(best, 0.0) + 1.0
    )
    return scores


def _row_weights(gm: GraphModule, node: Node, stats: LayerStats) -> Tensor:
    """Weights of the output rows: relative to what the next layer sees (module docstring)."""
    users = list(node.users)
    if len(users) == 1 and is_eval_batch_norm(users[0]) and users[0].args[0] is node:
        bn = users[0]
        var = get_tensor(gm, bn.args[4]).detach().double()
        gamma = get_tensor(gm, bn.args[1])
        g2 = (gamma.detach().double() if gamma is not None else torch.ones_like(var)).square()
        eps = float(bn.args[7]) if len(bn.args) > 7 else 1e-5
        if float(g2.sum()) > 0:
            return g2 / (var + eps) / g2.sum()
    energy = float(stats.energy.sum()) / max(stats.rows, 1)
    return torch.full_like(stats.energy, 1.0 / energy if energy > 0 else 1.0)
