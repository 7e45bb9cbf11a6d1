"""Rank selection: a fixed fraction, an energy fraction, or EVBMF's automatic estimate.

``ratio``: ``ceil(ratio · full)`` (at least 1). ``energy``: the smallest ``r`` whose leading
singular values keep ``Σ_{i<r} s_i² ≥ energy · Σ_i s_i²`` of the squared Frobenius norm (for
PCA the ``s_i²`` are the output covariance's eigenvalues, so ``energy`` is the fraction of output
variance kept). ``round_up``: to a multiple of ``round_to``, capped at the full rank.

EVBMF (empirical variational Bayesian matrix factorisation) estimates the rank of ``Y = A Bᵀ
+ E`` with Gaussian noise ``E`` and no free parameter, from the global analytic solution of
Nakajima, Sugiyama, Babacan and Tomioka, "Global analytic solution of fully-observed
variational Bayesian matrix factorization", JMLR 14 (2013) 1-37 (Theorem 13 and Section 5).
Kim et al., "Compression of deep convolutional neural networks for fast and low power mobile
applications", ICLR 2016, use it on the two channel unfoldings of a conv weight to pick
Tucker-2 ranks. For ``Y`` of shape ``L × M`` with ``L ≤ M``, ``α = L/M`` and singular values
``γ_h``:

- a component survives iff ``γ_h > γ̲ = σ · sqrt(M · x̄)``, ``x̄ = (1 + τ̄)(1 + α/τ̄)``, where
  ``τ̄ ≈ 2.5129 · sqrt(α)`` is the paper's approximation of the zero of its Ψ function;
- the noise variance ``σ²`` minimises the free energy (up to constants)

      Ω(σ²) = Σ_h ψ₀(x_h) + Σ_{h: x_h > x̄} ψ₁(x_h),       x_h = γ_h² / (M σ²),
      ψ₀(x) = x − log x,
      ψ₁(x) = log(τ(x) + 1) + α · log(τ(x)/α + 1) − τ(x),
      τ(x) = ½ (x − (1 + α) + sqrt((x − (1 + α))² − 4α)),

  over ``[max(γ²_{H̄+1} / (M x̄), mean_{h > H̄} γ_h² / M), Σ_h γ_h² / (LM)]`` with
  ``H̄ = ⌈L / (1 + α)⌉ − 1`` the largest rank EVB can return (the paper's bounds), by a
  log-spaced grid refined with golden-section search.
"""

from __future__ import annotations

import math

import torch

__all__ = ["evbmf_rank", "rank_for_energy", "rank_for_ratio", "round_up"]

_TAU_BAR_COEFF = 2.5129  # τ̄ ≈ 2.5129 √α (Nakajima et al. 2013)


def rank_for_ratio(full: int, ratio: float) -> int:
    """``ceil(ratio · full)``, at least 1 (the tiny slack absorbs float noise in ``ratio``)."""
    return max(1, min(full, math.ceil(ratio * full - 1e-9)))


def rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest ``r`` with ``Σ_{i<r} s_i² ≥ energy · Σ s_i²`` (``s`` in any order)."""
    squares = torch.sort(singular_values.double().abs(), descending=True).values ** 2
    total = squares.sum().item()
    if total <= 0.0:
        return 1
    kept = torch.cumsum(squares, 0) / total
    reached = (kept >= energy * (1 - 1e-12)).nonzero()
    return int(reached[0].item()) + 1 if len(reached) else len(squares)


def round_up(rank: int, multiple: int, full: int) -> int:
    """``rank`` rounded up to a multiple of ``multiple``, never above ``full``."""
    return min(full, math.ceil(rank / multiple) * multiple)


def evbmf_rank(matrix: torch.Tensor) -> int:
    """The rank EVBMF keeps for ``matrix`` (0 when it finds only noise)."""
    y = matrix.detach().double()
    if y.shape[0] > y.shape[1]:
        y = y.T
    rows, cols = y.shape
    squares = torch.linalg.svdvals(y) ** 2
    alpha = rows / cols
    tau_bar = _TAU_BAR_COEFF * math.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    h_bar = min(math.ceil(rows / (1 + alpha)) - 1, rows - 1)  # largest EVB rank (0-based)
    upper = squares.sum().item() / (rows * cols)
    if upper <= 0.0:
        return 0
    lower = max(squares[h_bar].item() / (cols * x_bar), squares[h_bar:].mean().item() / cols)
    sigma2 = (
        upper
        if lower >= upper
        else _minimise(lambda s2: _free_energy(s2, squares, cols, alpha, x_bar), lower, upper)
    )
    return int((squares > cols * sigma2 * x_bar).sum())  # γ_h² > γ̲² = M σ² x̄


def _free_energy(
    sigma2: float, squares: torch.Tensor, cols: int, alpha: float, x_bar: float
) -> float:
    x = (squares / (cols * sigma2)).clamp_min(1e-300)
    total = (x - x.log()).sum()
    signal = x[x > x_bar]
    shifted = signal - (1 + alpha)
    tau = 0.5 * (shifted + (shifted**2 - 4 * alpha).clamp_min(0).sqrt())
    total = total + ((tau + 1).log() + alpha * (tau / alpha + 1).log() - tau).sum()
    return total.item()


def _minimise(fn, low: float, high: float, *, grid: int = 64, steps: int = 60) -> float:
    """Minimum of ``fn`` on ``[low, high]``: a log-spaced grid, then golden-section search in
    the grid cell around the best point (robust to a few local minima; no scipy needed)."""
    points = torch.logspace(math.log10(low), math.log10(high), grid, dtype=torch.float64)
    values = [fn(p.item()) for p in points]
    best = min(range(grid), key=values.__getitem__)
    a, b = points[max(best - 1, 0)].item(), points[min(best + 1, grid - 1)].item()
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = fn(c), fn(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = fn(d)
    return (a + b) / 2
