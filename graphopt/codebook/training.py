"""Train the centroids of dense-form codebooks: weight = centroids[index] while recovery runs.

A dense-form layer (``graphopt.codebook.form``) stores plain weights; training them freely
would scatter the shared values. ``tie_codebooks`` re-parametrises each such weight with
``torch.nn.utils.parametrize`` as ``lookup(centroids, index)``, a trainable ``centroids``
parameter and a fixed index, so a step moves every weight of a cluster by the sum of their
gradients (Han et al.'s centroid fine-tuning). ``release`` writes the trained values back as
plain weights and the centroids into ``gm.meta``. Parametrisation, not a graph rewrite: the
graph reads ``owner.weight`` by name, so the graph code (and the fingerprint of a run that
keeps its input) stays as it was.

A later pass may have rescaled the weight per output channel (BatchNorm folding; int8, whose
QAT form rounds each channel on its own grid). Each (channel, cluster) group then still holds
one value: the codebook is re-derived per channel from the weights and trained so. A weight
whose groups hold several values (or whose shape changed) is refused with the reason and
trains as a plain weight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from graphopt.codebook.form import entries, lookup, zero_entry_mask

__all__ = ["CodebookWeight", "Tied", "derive_centroids", "tie_codebooks"]


class CodebookWeight(nn.Module):
    """The parametrisation ``weight = lookup(centroids, index)`` (the stored weight unused)."""

    def __init__(self, index: Tensor, centroids: Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.long())
        self.centroids = nn.Parameter(centroids.detach().clone())

    def forward(self, original: Tensor) -> Tensor:
        return lookup(self.centroids, self.index).to(original.dtype)


@dataclass
class Tied:
    """What ``tie_codebooks`` did: tied weight names, centroid masks, refusals, the undo."""

    weights: tuple[str, ...] = ()
    masks: dict[str, Tensor] = field(default_factory=dict)
    refused: list[dict[str, str]] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.weights)

    def release(self) -> None:
        """Plain weights again (holding the trained lookup); centroids saved to ``gm.meta``."""
        while self._undo:
            self._undo.pop()()


def derive_centroids(weight: Tensor, index: Tensor, centroids: Tensor) -> Tensor | None:
    """Centroids that reproduce ``weight`` exactly from ``index``: the stored ones, or one
    codebook per channel read off the weights; None when a (channel, cluster) group holds
    several values."""
    weight = weight.detach()
    if torch.equal(lookup(centroids, index).to(weight.dtype), weight):
        return centroids.to(weight.dtype)
    channels, k = weight.shape[0], centroids.shape[-1]
    values = weight.reshape(channels, -1)
    rows = index.long().reshape(channels, -1)
    low = torch.full((channels, k), float("inf"), dtype=weight.dtype)
    high = torch.full((channels, k), float("-inf"), dtype=weight.dtype)
    low = low.scatter_reduce(1, rows, values, "amin")
    high = high.scatter_reduce(1, rows, values, "amax")
    used = torch.zeros(channels, k, dtype=torch.bool).scatter_(1, rows, True)
    if not torch.equal(low[used], high[used]):
        return None
    base = centroids.to(weight.dtype).expand(channels, k) if centroids.dim() == 1 else centroids
    return torch.where(used, low, base.to(weight.dtype))


def tie_codebooks(model: nn.Module) -> Tied:
    """Parametrise every dense-form codebook weight of ``model`` (a GraphModule's meta)."""
    tied = Tied()
    stored = entries(model)
    params = dict(model.named_parameters())
    names = []
    for target, entry in stored.items():
        if entry.get("form") != "dense":
            continue  # the gather form's codebook is a parameter already
        weight = params.get(target)
        index = entry["index"]
        reason = _unfit(weight, index)
        centroids = None if reason else derive_centroids(weight, index, entry["centroids"])
        if centroids is None:
            reason = reason or "a later pass changed the weights within clusters"
            tied.refused.append({"tensor": target, "reason": f"{reason}; trained unshared"})
            continue
        owner_path, _, leaf = target.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        weight_fn = CodebookWeight(index, centroids)
        parametrize.register_parametrization(owner, leaf, weight_fn, unsafe=True)
        prefix = f"{owner_path}." if owner_path else ""
        if entry.get("zero"):
            tied.masks[f"{prefix}parametrizations.{leaf}.0.centroids"] = zero_entry_mask(centroids)
        tied._undo.append(_untie(owner, leaf, weight_fn, entry))
        names.append(target)
    tied.weights = tuple(names)
    return tied


def _unfit(weight: Tensor | None, index: Tensor) -> str | None:
    if weight is None:
        return "no such parameter any more"
    if tuple(weight.shape) != tuple(index.shape):
        return f"shape {tuple(weight.shape)} ≠ codebook index {tuple(index.shape)}"
    return None


def _untie(owner: nn.Module, leaf: str, weight_fn: CodebookWeight, entry: dict) -> Callable:
    def undo() -> None:
        trained = weight_fn.centroids.detach().clone()
        parametrize.remove_parametrizations(owner, leaf, leave_parametrized=True)
        entry["centroids"] = trained
        entry["per_channel"] = trained.dim() == 2

    return undo
