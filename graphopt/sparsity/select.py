"""From scores to masks: per layer, global, N:M; and the gradual sparsity schedule.

Masks are ``True`` where a weight is kept. Ties are broken by a stable sort (the first of
equal scores in memory order is pruned first), so a mask is a function of the scores.
Weights that are already exactly zero score ``-inf`` (``pruned_first``): they are pruned
before any live weight, so a second run at the same sparsity changes nothing and a schedule
never revives a weight it pruned.

- ``per_layer``: every layer loses ``round(s · n)`` of its ``n`` weights (the layer-wise
  ranking of tf-model-optimization).
- ``global_``: one ranking over all layers; ``round(s · N)`` of the ``N`` weights go, wherever
  they are. Magnitudes of layers with different scales compete directly (as in Frankle &
  Carbin's global pruning), so large layers with small weights lose the most; Taylor scores
  estimate a loss change and are comparable across layers by construction.
- ``n_of_m``: in every group of ``M`` consecutive weights along the input dimension (dim 1 of
  a conv or linear weight, the reduction dimension), the ``N`` best are kept — the 2:4 pattern
  of NVIDIA's sparse tensor cores. The sparsity is exactly ``1 − N/M``.

Schedule (``polynomial``): tf-model-optimization's ``PolynomialDecay`` with power 3,
``s_t = s_f + (s_i − s_f)(1 − t/n)³`` for steps ``t = 1 … n``: large cuts while many redundant
weights remain, small ones near the target, where each weight matters more.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

__all__ = ["global_", "n_of_m", "per_layer", "polynomial", "pruned_first"]


def pruned_first(score: Tensor, weight: Tensor) -> Tensor:
    """``score`` with the weight's exact zeros at ``-inf`` (pruned before any live weight)."""
    return torch.where(weight.detach() == 0, float("-inf"), score.float())


def per_layer(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Keep masks pruning ``round(sparsity · numel)`` weights of each layer."""
    return {
        target: _lowest_pruned(score.reshape(-1), round(sparsity * score.numel())).view_as(score)
        for target, score in scores.items()
    }


def global_(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Keep masks pruning ``round(sparsity · N)`` weights of all layers together."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()]) if scores else torch.zeros(0)
    keep = _lowest_pruned(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for target, score in scores.items():
        masks[target] = keep[start : start + score.numel()].view_as(score)
        start += score.numel()
    return masks


def n_of_m(score: Tensor, n: int, m: int) -> Tensor:
    """Keep mask with the ``n`` best of every ``m`` consecutive weights along dim 1.

    ``ValueError`` when dim 1 (the input channels per group) is not a multiple of ``m``.
    """
    if score.dim() < 2 or score.shape[1] % m:
        width = score.shape[1] if score.dim() >= 2 else 1
        raise ValueError(f"{width} input channels per group is not a multiple of M={m}")
    moved = score.movedim(1, -1)
    groups = moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m)
    best = groups.topk(n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, best, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


def polynomial(initial: float, final: float, steps: int, power: float = 3.0) -> list[float]:
    """Target sparsity after each of ``steps`` steps (the last is ``final``)."""
    return [final + (initial - final) * (1 - t / steps) ** power for t in range(1, steps + 1)]


def _lowest_pruned(flat: Tensor, count: int) -> Tensor:
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if count > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:count]] = False
    return keep
