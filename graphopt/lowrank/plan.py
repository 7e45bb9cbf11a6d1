"""Which method and rank each layer gets, and what that costs: decided before any factoring.

``method_for`` maps the requested method to the one a layer gets: a linear layer or a 1×1 conv
has only its channel matrix, so ``tucker`` / ``cp`` / ``spatial_svd`` fall back to ``svd``
there (Tucker-2 of a 1×1 conv is exactly an SVD, CP and spatial SVD have nothing to split);
depthwise and grouped convs are refused.

``full_rank`` is what ``ratio`` scales: the rank at which the decomposition is exact
(``svd``/``pca``: ``min(C_out, C_in·k_h·k_w)``; ``tucker``: that per channel mode;
``spatial_svd``: ``min(C_in·k_h, C_out·k_w)``). CP is the exception: its exact rank is not
computable, and the trivially exact one (``min(C_in, C_out)·k_h·k_w``) costs several times
the layer, so for ``cp`` ``ratio`` scales the cost-neutral rank ``R₀`` at which the four CP
layers cost as many MACs as the original: ``ratio = 0.5`` about halves the layer's MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from graphopt.lowrank.factorize import cp_exact_rank, singular_values, spatial_matrix, unfold
from graphopt.lowrank.layers import Layer, Stage, factor_stages, stage_cost
from graphopt.lowrank.ranks import evbmf_rank, rank_for_energy, rank_for_ratio, round_up

__all__ = ["LayerPlan", "RankRule", "full_rank", "method_for", "plan_layer"]

Rank = int | tuple[int, int]


@dataclass(frozen=True)
class RankRule:
    """How ranks are chosen: exactly one of ``ratio``, ``energy``, ``rank`` (or none, when
    only explicit per-layer ranks apply), rounded up to a multiple of ``round_to``."""

    ratio: float | None = None
    energy: float | None = None
    rank: int | str | None = None
    round_to: int = 1


@dataclass(frozen=True)
class LayerPlan:
    """A layer's method, rank and replacement layers, with per-sample costs before and after."""

    layer: Layer
    method: str
    rank: Rank
    full_rank: Rank
    stages: tuple[Stage, ...]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def saves(self) -> bool:
        return self.macs_after < self.macs_before and self.params_after < self.params_before


def method_for(layer: Layer, method: str) -> str:
    """The method ``layer`` gets for the requested ``method``; raises ValueError to refuse."""
    if layer.kind == "conv" and layer.groups != 1:
        if layer.weight.shape[1] == 1:
            raise ValueError(
                f"depthwise conv (groups={layer.groups}): each filter reads one channel, so "
                "there is no channel rank to cut and factoring would only add layers"
            )
        raise ValueError(
            f"grouped conv (groups={layer.groups}): a low-rank factor would mix the groups; "
            "not supported"
        )
    if method in ("svd", "pca") or not layer.pointwise:
        if method == "spatial_svd" and 1 in layer.kernel:
            k_h, k_w = layer.kernel
            raise ValueError(
                f"spatial SVD splits a k×k kernel into k×1 and 1×k; this kernel is {k_h}×{k_w}"
            )
        return method
    return "svd"


def full_rank(layer: Layer, method: str) -> Rank:
    c_out, c_in = layer.out_channels, layer.in_channels
    k_h, k_w = layer.kernel
    if method == "tucker":
        return (min(c_out, c_in * k_h * k_w), min(c_in, c_out * k_h * k_w))
    if method == "spatial_svd":
        return min(c_in * k_h, c_out * k_w)
    if method == "cp":
        return _cp_cost_neutral_rank(layer)
    return min(c_out, c_in * k_h * k_w)


def plan_layer(
    layer: Layer,
    method: str,
    rule: RankRule,
    *,
    explicit: Rank | None = None,
    spectrum: Callable[[], Tensor] | None = None,
) -> LayerPlan:
    """Choose the rank of ``layer`` (already mapped by ``method_for``) and cost the result.

    ``explicit`` (from ``ranks``) is used as given, capped at the exact rank. ``spectrum``
    returns the eigenvalues of the output covariance, needed for ``pca`` with ``energy``.
    Raises ValueError with the reason when no rank applies.
    """
    full = full_rank(layer, method)
    cap = cp_exact_rank(layer.weight) if method == "cp" else full  # no larger rank is useful
    if explicit is not None:
        rank = _explicit(explicit, method, cap)
    elif rule.ratio is not None:
        rank = _per_mode(full, lambda f, _m: rank_for_ratio(f, rule.ratio))
    elif rule.energy is not None:
        rank = _energy_rank(layer, method, rule.energy, full, spectrum)
    elif rule.rank == "vbmf":
        rank = _per_mode(full, lambda _f, m: evbmf_rank(_matrix(layer, method, m)))
        if 0 in _as_tuple(rank):
            raise ValueError(
                f"VBMF finds no component above the noise level (rank {rank}): the weight "
                "looks like noise; give a rank or a ratio for it"
            )
    elif rule.rank is not None:
        rank = _per_mode(cap, lambda c, _m: min(int(rule.rank), c))
    else:
        raise ValueError("not in ranks, and no ratio, energy or rank given")
    if explicit is None and rule.round_to > 1:
        rank = _per_mode(rank, lambda r, m: round_up(r, rule.round_to, _as_tuple(cap)[m]))
    stages = tuple(factor_stages(layer, method, rank))
    macs_before, params_before = stage_cost(layer, [layer.original_stage()])
    macs_after, params_after = stage_cost(layer, list(stages))
    return LayerPlan(
        layer, method, rank, full, stages, macs_before, macs_after, params_before, params_after
    )


# ---- helpers ---------------------------------------------------------------------------------
def _per_mode(value: Rank, fn: Callable[[int, int], int]) -> Rank:
    """Apply ``fn(value, mode)`` to an int or to each entry of a Tucker pair."""
    if isinstance(value, tuple):
        return tuple(fn(v, m) for m, v in enumerate(value))
    return fn(value, 0)


def _as_tuple(value: Rank) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,)


def _explicit(value: Rank, method: str, cap: Rank) -> Rank:
    if isinstance(value, tuple) and method != "tucker":
        raise ValueError(f"a (R_out, R_in) pair of ranks only applies to tucker, not {method}")
    if method == "tucker" and not isinstance(value, tuple):
        value = (value, value)
    return _per_mode(value, lambda v, m: min(v, _as_tuple(cap)[m]))


def _energy_rank(
    layer: Layer, method: str, energy: float, full: Rank, spectrum: Callable[[], Tensor] | None
) -> Rank:
    if method == "pca":
        if spectrum is None:
            raise ValueError("energy with pca needs the output covariance")
        return min(rank_for_energy(spectrum().clamp_min(0).sqrt(), energy), full)
    return _per_mode(
        full,
        lambda f, m: min(f, rank_for_energy(singular_values(_matrix(layer, method, m)), energy)),
    )


def _matrix(layer: Layer, method: str, mode: int) -> Tensor:
    """The matrix whose singular values rank ``method`` (``mode`` picks Tucker's unfolding)."""
    w = layer.weight.detach().double()
    if method == "tucker":
        return unfold(w, mode)
    if method == "spatial_svd":
        return spatial_matrix(w)
    return w.reshape(w.shape[0], -1)


def _cp_cost_neutral_rank(layer: Layer) -> int:
    """``R₀ = MACs(layer) / MACs(CP at rank 1)``: CP cost is linear in the rank."""
    per_rank, _ = stage_cost(layer, factor_stages(layer, "cp", 1))
    original, _ = stage_cost(layer, [layer.original_stage()])
    return max(1, math.floor(original / max(per_rank, 1)))
