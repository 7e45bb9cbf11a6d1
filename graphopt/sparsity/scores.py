"""How much each weight matters: magnitude, or a first-order Taylor estimate of the loss.

- ``magnitude``: ``|w|`` (L1), the criterion of Han et al. 2015 and of tf-model-optimization's
  ``prune_low_magnitude``. Data-free.
- ``taylor``: ``Σ_b (w · ∂L_b/∂w)²`` over a few batches ``b`` (Molchanov et al. 2019, applied
  per weight): the squared first-order estimate of how much the loss changes when ``w`` is set
  to zero, accumulated per batch so that gradients of opposite sign do not cancel.

The Taylor loss is cross-entropy against the batch's labels. Unlabelled batches use the
teacher's top-1 prediction as the label: the teacher's soft outputs would be the natural
target, but while the graph still equals the teacher the KL divergence to them has a zero
gradient everywhere, so every score would be zero. Without labels and without a teacher the
pass refuses (it says so; see ``graphopt.passes.sparsify``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule

from graphopt.ir import get_tensor
from graphopt.recovery.features import first_tensor
from graphopt.sparsity.layers import WeightRef

__all__ = ["Batch", "magnitude", "taylor"]

Batch = tuple[tuple[Tensor, ...], Tensor | None]


def magnitude(gm: GraphModule, refs: Sequence[WeightRef]) -> dict[str, Tensor]:
    """``|w|`` of every weight, by target."""
    return {r.target: _weight(gm, r).detach().abs() for r in refs}


def taylor(
    gm: GraphModule,
    refs: Sequence[WeightRef],
    batches: Sequence[Batch],
    teacher: nn.Module | None,
) -> dict[str, Tensor]:
    """``Σ_b (w · ∂L_b/∂w)²`` by target; the graph's gradient flags are left as they were."""
    weights = {r.target: _weight(gm, r) for r in refs}
    params = list(gm.parameters())
    flags = [(p, p.requires_grad, p.grad) for p in params]
    scores = {t: torch.zeros_like(w, dtype=torch.float64) for t, w in weights.items()}
    try:
        for p in params:
            p.requires_grad_(False)
        for w in weights.values():
            w.requires_grad_(True)
        for inputs, labels in batches:
            target = labels if labels is not None else _pseudo_labels(teacher, inputs)
            with torch.enable_grad():
                logits = first_tensor(gm(*inputs))
                loss = _cross_entropy(logits, target)
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for (t, w), g in zip(weights.items(), grads, strict=True):
                if g is not None:
                    scores[t] += (w.detach().double() * g.double()).square()
    finally:
        for p, flag, grad in flags:
            p.requires_grad_(flag)
            p.grad = grad
    return {t: s.float() for t, s in scores.items()}


def _weight(gm: GraphModule, ref: WeightRef) -> Tensor:
    node = {n.name: n for n in gm.graph.nodes}[ref.node]
    tensor = get_tensor(gm, node.args[1])
    if tensor is None:  # find_weights checked it; a rewrite in between is a bug
        raise RuntimeError(f"{ref.target} is no longer a parameter of {ref.where}")
    return tensor


def _pseudo_labels(teacher: nn.Module | None, inputs: tuple[Tensor, ...]) -> Tensor:
    if teacher is None:
        raise ValueError("unlabelled batches need ctx.teacher for pseudo-labels")
    with torch.no_grad():
        return first_tensor(teacher(*inputs)).argmax(-1)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    if logits.dim() < 2:
        raise ValueError(
            f"taylor scores need class logits (batch, …, classes), got shape {tuple(logits.shape)}"
        )
    rows = logits.reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1).long()
    if labels.numel() != rows.shape[0]:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}"
        )
    return F.cross_entropy(rows.float(), labels)
