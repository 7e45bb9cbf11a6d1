"""Low-rank factorisations of a layer's weight, as pure tensor functions.

Every function takes a linear weight ``W`` (``out × in``) or a conv weight (``C_out × C_in ×
k_h × k_w``) and returns a ``Factorization``: the weights of the layers that replace it, in
order, shaped for ``aten.linear`` / ``aten.conv2d``, and the relative error. The maths is
computed in float64 and cast back to the weight's dtype.

- ``svd``: ``W`` as the matrix ``out × (in·k_h·k_w)``, truncated ``W ≈ U_r S_r V_rᵀ`` written
  as the projection ``U_r (U_rᵀ W)``: first layer ``U_rᵀ W`` (a conv keeps its ``k_h × k_w``
  kernel, stride, padding and dilation, with ``r`` outputs), second layer ``U_r`` (a linear or a
  1×1 conv) with the bias (when ``W`` is tall, ``(W V_r) V_rᵀ`` instead). For a linear layer
  this is two linears; for a conv it is the channel decomposition of Zhang et al. (2015), the
  weight-only counterpart of ``pca``.
- ``tucker2``: ``W ≈ G ×₀ U_out ×₁ U_in`` (Kim et al., ICLR 2016): 1×1 conv ``U_inᵀ``
  (``C_in → R_in``), the ``k_h × k_w`` core ``G`` (``R_in → R_out``, carrying stride, padding and
  dilation), 1×1 conv ``U_out`` (``R_out → C_out``) with the bias. Computed by HOOI started from
  the truncated HOSVD (see ``tucker2`` for why not ``tensorly``'s ``partial_tucker``).
- ``cp``: ``W[o,i,h,w] ≈ Σ_r A[o,r] B[i,r] K_h[h,r] K_w[w,r]`` (Lebedev et al., ICLR 2015),
  by alternating least squares (see ``_mttkrp`` for why not ``tensorly``'s ``parafac``, the
  tests' reference): 1×1 conv ``Bᵀ`` (``C_in → R``), depthwise
  ``k_h × 1`` conv ``K_h``, depthwise ``1 × k_w`` conv ``K_w``, 1×1 conv ``A`` with the bias.
- ``spatial_svd``: ``W[o,i,h,w] ≈ Σ_r V[r,i,h] H[o,r,w]`` (Jaderberg et al., BMVC 2014): the
  matrix ``M[(i,h),(o,w)]`` truncated as in ``svd``; a ``k_h × 1`` conv ``C_in → R`` then a
  ``1 × k_w`` conv ``R → C_out`` with the bias.
- ``pca``: data-driven output reconstruction (Zhang, Zou, He and Sun, "Efficient and accurate
  approximations of nonlinear convolutional networks", CVPR 2015, linear case). The outputs
  ``y = W x + b`` of the layer on calibration data have mean ``μ`` and covariance
  ``Σ = E[(y − μ)(y − μ)ᵀ] = Q Λ Qᵀ``; with ``V`` the top-``r`` eigenvectors, the projection
  ``ŷ = μ + V Vᵀ (y − μ)`` is the best rank-``r`` affine reconstruction of the outputs in the
  mean-squared sense (Eckart-Young on the centred responses), and it factors as

      ŷ = V (Vᵀ W x) + V Vᵀ b + μ − V Vᵀ μ = V (W₁ x) + b₂,
      W₁ = Vᵀ W  (r outputs, no bias),    b₂ = μ + V Vᵀ (b − μ).

  The first layer keeps the kernel, stride, padding and dilation, the second is a linear or
  1×1 conv ``V`` with bias ``b₂``. On the calibration data ``E‖y − ŷ‖² = Σ_{i>r} λ_i``, so the
  reported error is ``sqrt(Σ_{i>r} λ_i / E‖y‖²)``, the relative Frobenius error of the
  outputs. Weight SVD minimises ``‖W − Ŵ‖`` instead, which weights every input direction
  alike; PCA spends its rank on the directions the inputs actually excite.

Why the cross-correlation identities hold with padding: every factor layer before the last
has no bias, so it maps the zero padding to zeros and padding can move to the layer that has
the spatial kernel (``k_h`` padding to the ``k_h × 1`` layer, ``k_w`` padding to the
``1 × k_w`` layer); strides and dilations split the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "Factorization",
    "cp",
    "cp_exact_rank",
    "pca",
    "relative_error",
    "singular_values",
    "spatial_matrix",
    "spatial_svd",
    "svd",
    "tucker2",
    "unfold",
]

_F64 = torch.float64
_CP_ITERATIONS = 100  # ALS sweeps at most; they stop once the error settles (_CP_TOL)
_CP_TOL = 1e-7
_HOOI_ITERATIONS = 20  # at most; sweeps stop once the error moves by less than _HOOI_TOL
_HOOI_TOL = 1e-4  # as tensorly's partial_tucker


@dataclass(frozen=True)
class Factorization:
    """The factor layers' weights in order, the last layer's bias, and the error.

    ``bias`` is the last layer's new bias, or None to keep the layer's original bias.
    ``error`` is relative: of the weight for weight-based methods, ``‖W − Ŵ‖_F / ‖W‖_F``, and of
    the calibration outputs for ``pca`` (``error_of`` says which).
    """

    weights: tuple[Tensor, ...]
    bias: Tensor | None
    error: float
    error_of: str = "weight"


def relative_error(weight: Tensor, approx: Tensor) -> float:
    """``‖W − Ŵ‖_F / ‖W‖_F`` (0 for a zero weight reproduced exactly)."""
    w, a = weight.to(_F64), approx.to(_F64)
    norm = torch.linalg.norm(w).item()
    diff = torch.linalg.norm(w - a).item()
    return diff / norm if norm > 0 else diff


def unfold(weight: Tensor, mode: int) -> Tensor:
    """Mode-``mode`` matricisation: that dimension's fibres as columns (``dim × rest``)."""
    return torch.movedim(weight, mode, 0).reshape(weight.shape[mode], -1)


def svd(weight: Tensor, rank: int) -> Factorization:
    """Truncated SVD of ``out × rest``: first layer ``(r, *rest)``, second ``(out, r[, 1, 1])``."""
    w = weight.to(_F64)
    first, second = _truncate(w.reshape(w.shape[0], -1), rank)
    approx = second @ first
    first = first.reshape(rank, *w.shape[1:])
    second = second.reshape(w.shape[0], rank, *([1] * (w.dim() - 2)))
    return Factorization(_cast((first, second), weight), None, relative_error(w, approx.view_as(w)))


def singular_values(matrix: Tensor) -> Tensor:
    """Singular values (descending) from the smaller Gram matrix's eigenvalues."""
    m = matrix.to(_F64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh(gram).flip(0).clamp_min(0).sqrt()


def tucker2(weight: Tensor, ranks: tuple[int, int]) -> Factorization:
    """Tucker-2 of a conv weight on its two channel modes; ``ranks = (R_out, R_in)``.

    Why not ``tensorly.decomposition.partial_tucker``: in tensorly 0.10 its HOOI sweeps ignore
    the ``svd=`` argument and take full SVDs of ``C × R·k²`` unfoldings (about 5 s for one
    512-channel 3×3 conv on this machine), and its ``symeig_svd`` builds the larger Gram
    matrix. The same HOOI here uses eigen-decompositions of the small ``C × C`` Gram matrices
    and matches ``partial_tucker``'s error (tested).
    """
    r_out, r_in = ranks
    w = weight.to(_F64)
    u_out = _leading_left_vectors(unfold(w, 0), r_out)
    u_in = _leading_left_vectors(unfold(w, 1), r_in)
    norm2 = w.square().sum()
    core = torch.einsum("oihw,os,ir->srhw", w, u_out, u_in)
    error = (1 - core.square().sum() / norm2).clamp_min(0).sqrt()
    for _ in range(_HOOI_ITERATIONS):
        u_out = _leading_left_vectors(unfold(torch.einsum("oihw,ir->orhw", w, u_in), 0), r_out)
        u_in = _leading_left_vectors(unfold(torch.einsum("oihw,os->sihw", w, u_out), 1), r_in)
        core = torch.einsum("oihw,os,ir->srhw", w, u_out, u_in)
        previous, error = error, (1 - core.square().sum() / norm2).clamp_min(0).sqrt()
        if previous - error < _HOOI_TOL:  # orthonormal factors: ‖W − Ŵ‖² = ‖W‖² − ‖G‖²
            break
    approx = torch.einsum("srhw,os,ir->oihw", core, u_out, u_in)
    reduce = u_in.T[:, :, None, None]
    restore = u_out[:, :, None, None]
    return Factorization(_cast((reduce, core, restore), weight), None, relative_error(w, approx))


def cp_exact_rank(weight: Tensor) -> int:
    """A rank at which a CP decomposition of the conv weight exists exactly (built directly).

    ``W = Σ_{o,h,w} e_o ⊗ W[o,:,h,w] ⊗ e_h ⊗ e_w`` has ``C_out·k_h·k_w`` terms, and the same
    with the roles of ``o`` and ``i`` swapped ``C_in·k_h·k_w``: the smaller one.
    """
    c_out, c_in, k_h, k_w = weight.shape
    return min(c_out, c_in) * k_h * k_w


def cp(weight: Tensor, rank: int, *, seed: int = 0) -> Factorization:
    """CP of a conv weight by ALS, or exactly when ``rank ≥ cp_exact_rank``.

    ALS is not guaranteed to reach an exact decomposition even where one exists, so at the
    trivially exact rank the factors are built directly (tests rely on full rank being exact).
    """
    w = weight.to(_F64)
    if rank >= cp_exact_rank(w):
        a, b, kh, kw = _cp_exact(w, rank)
    else:
        a, b, kh, kw = _cp_als(w, rank, seed)
    approx = _cp_to_tensor(a, b, kh, kw)
    k_h, k_w = w.shape[2:]
    pointwise_in = b.T[:, :, None, None]
    vertical = kh.T.reshape(rank, 1, k_h, 1)
    horizontal = kw.T.reshape(rank, 1, 1, k_w)
    pointwise_out = a[:, :, None, None]
    factors = (pointwise_in, vertical, horizontal, pointwise_out)
    return Factorization(_cast(factors, weight), None, relative_error(w, approx))


def spatial_matrix(weight: Tensor) -> Tensor:
    """``M[(i,h),(o,w)] = W[o,i,h,w]``, the matrix whose rank ``spatial_svd`` truncates."""
    c_out, c_in, k_h, k_w = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c_in * k_h, c_out * k_w)


def spatial_svd(weight: Tensor, rank: int) -> Factorization:
    """``k_h × 1`` conv ``(R, C_in, k_h, 1)`` then ``1 × k_w`` conv ``(C_out, R, 1, k_w)``."""
    w = weight.to(_F64)
    c_out, c_in, k_h, k_w = w.shape
    matrix = spatial_matrix(w)
    right, left = _truncate(matrix, rank)  # matrix ≈ left @ right: (C_in·k_h, R) @ (R, C_out·k_w)
    vertical = left.T.reshape(rank, c_in, k_h, 1)
    horizontal = right.reshape(rank, c_out, k_w).permute(1, 0, 2).reshape(c_out, rank, 1, k_w)
    approx = left @ right
    return Factorization(
        _cast((vertical, horizontal), weight), None, relative_error(matrix, approx)
    )


def pca(
    weight: Tensor, bias: Tensor | None, mean: Tensor, covariance: Tensor, rank: int
) -> Factorization:
    """Output-PCA factors ``(Vᵀ W, V)`` and the second layer's bias ``μ + V Vᵀ (b − μ)``.

    ``mean`` and ``covariance`` are of the layer's outputs (per output channel / feature) on
    calibration data; the error is of those outputs (see the module docstring).
    """
    w = weight.to(_F64)
    mu, cov = mean.to(_F64), covariance.to(_F64)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    eigenvalues = eigenvalues.flip(0).clamp_min(0)
    v = eigenvectors.flip(1)[:, :rank]  # (C_out, r)
    b = bias.to(_F64) if bias is not None else torch.zeros_like(mu)
    first = (v.T @ w.reshape(w.shape[0], -1)).reshape(rank, *w.shape[1:])
    second = v.reshape(w.shape[0], rank, *([1] * (w.dim() - 2)))
    new_bias = mu + v @ (v.T @ (b - mu))
    second_moment = eigenvalues.sum() + mu @ mu  # E‖y‖² = tr Σ + ‖μ‖²
    discarded = eigenvalues[rank:].sum()
    error = (discarded / second_moment).sqrt().item() if second_moment > 0 else 0.0
    dtype = weight.dtype
    return Factorization(_cast((first, second), weight), new_bias.to(dtype), error, "output")


# ---- helpers ---------------------------------------------------------------------------------
def _cast(tensors: tuple[Tensor, ...], like: Tensor) -> tuple[Tensor, ...]:
    return tuple(t.to(like.dtype).contiguous() for t in tensors)


def _truncate(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """``(first, second)`` with ``second @ first`` the best rank-``rank`` approximation.

    Eckart-Young as a projection, ``U_r U_rᵀ M`` (or ``M V_r V_rᵀ`` when ``M`` is tall): the
    orthonormal basis comes from the smaller Gram matrix (an ``m × m`` eigen-decomposition
    instead of an SVD of ``M``, 10-50× faster on conv weights), and no singular value is ever
    divided by, so the result is exact at full rank. ``second`` (tall case: ``first``) has
    orthonormal columns (rows); the other factor carries the scale.
    """
    if matrix.shape[0] <= matrix.shape[1]:
        u = _leading_left_vectors(matrix, rank)  # (m, r)
        return u.T @ matrix, u
    v = _leading_left_vectors(matrix.T, rank)  # (n, r)
    return v.T, matrix @ v


def _leading_left_vectors(matrix: Tensor, count: int) -> Tensor:
    """The ``count`` leading left singular vectors, from the ``rows × rows`` Gram matrix.

    In float64 the squared condition number only blurs directions whose singular values are
    below ~1e-8 of the largest, which carry no weight in the reconstruction; at full rank the
    basis is a complete orthonormal one and the reconstruction is exact whatever its accuracy.
    """
    _, vectors = torch.linalg.eigh(matrix @ matrix.T)
    return vectors.flip(1)[:, :count].contiguous()


def _cp_exact(w: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Rank-one terms over (o, h, w) or (i, h, w), zero-padded to ``rank`` terms."""
    c_out, c_in, k_h, k_w = w.shape
    eye_h, eye_w = torch.eye(k_h, dtype=_F64), torch.eye(k_w, dtype=_F64)
    if c_out <= c_in:  # term (o, h, w): A = e_o, B = W[o, :, h, w]
        a = torch.eye(c_out, dtype=_F64)[:, :, None, None].expand(c_out, c_out, k_h, k_w)
        b = w.permute(1, 0, 2, 3)  # (C_in, o, h, w)
    else:  # term (i, h, w): A = W[:, i, h, w], B = e_i
        a = w
        b = torch.eye(c_in, dtype=_F64)[:, :, None, None].expand(c_in, c_in, k_h, k_w)
    terms = a.shape[1] * k_h * k_w
    kh = eye_h[:, None, :, None].expand(k_h, a.shape[1], k_h, k_w)
    kw = eye_w[:, None, None, :].expand(k_w, a.shape[1], k_h, k_w)
    factors = [f.reshape(f.shape[0], terms) for f in (a, b, kh, kw)]
    pad = rank - terms
    return tuple(torch.cat([f, f.new_zeros(f.shape[0], pad)], 1) for f in factors)


def _cp_als(w: Tensor, rank: int, seed: int) -> tuple[Tensor, ...]:
    """Alternating least squares (Kolda & Bader 2009, §3.4), started from the leading left
    singular vectors of each unfolding (random seeded columns where a mode has fewer than
    ``rank`` dimensions, as ``tensorly``'s ``init="svd"`` does).

    Each sweep sets every factor in turn to ``MTTKRP_n · (⊛_{k≠n} F_kᵀ F_k)⁻¹`` (a tiny ridge
    keeps the ``R × R`` solve defined when ``R`` exceeds a mode's size), and stops once the
    relative error moves by less than ``_CP_TOL``.
    """
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for mode in range(w.dim()):
        basis = _leading_left_vectors(unfold(w, mode), min(rank, w.shape[mode]))
        extra = torch.randn(w.shape[mode], rank - basis.shape[1], generator=gen, dtype=_F64)
        factors.append(torch.cat([basis, extra / w.shape[mode] ** 0.5], 1))
    norm2 = w.square().sum()
    grams = [f.T @ f for f in factors]
    error = float("inf")
    for _ in range(_CP_ITERATIONS):
        for mode in range(w.dim()):
            mttkrp = _mttkrp(w, factors, mode)
            gram = torch.ones(rank, rank, dtype=_F64)
            for k, g in enumerate(grams):
                if k != mode:
                    gram = gram * g
            ridge = 1e-12 * gram.diagonal().mean().clamp_min(1e-300)
            eye = torch.eye(rank, dtype=_F64)
            factors[mode] = torch.linalg.solve(gram + ridge * eye, mttkrp.T).T
            grams[mode] = factors[mode].T @ factors[mode]
        inner = (mttkrp * factors[-1]).sum()  # ⟨W, Ŵ⟩ via the last mode's MTTKRP
        fitted = torch.stack(grams).prod(0).sum()  # ‖Ŵ‖²
        previous = error
        error = ((norm2 - 2 * inner + fitted).clamp_min(0) / norm2).sqrt().item()
        if abs(previous - error) < _CP_TOL:
            break
    return tuple(factors)


def _mttkrp(w: Tensor, factors: list[Tensor], mode: int) -> Tensor:
    """``unfold(W, mode) @ khatri_rao(others)`` without forming the Khatri-Rao product.

    Contracting the largest other mode first (one GEMM) leaves an intermediate of the two
    small modes × R; the remaining modes are then folded in one at a time. ``tensorly``'s
    MTTKRP builds the ``(∏ other dims) × R`` Khatri-Rao matrix instead: 6 GB for a 512-channel
    3×3 conv at rank 974, which is why the pass does not use ``parafac``.
    """
    letters = "abcdefgh"[: w.dim()]
    others = [m for m in range(w.dim()) if m != mode]
    first = max(others, key=lambda m: w.shape[m])
    kept = letters.replace(letters[first], "")
    result = torch.einsum(f"{letters},{letters[first]}r->{kept}r", w, factors[first])
    for m in others:
        if m != first:
            smaller = kept.replace(letters[m], "")
            result = torch.einsum(f"{kept}r,{letters[m]}r->{smaller}r", result, factors[m])
            kept = smaller
    return result


def _cp_to_tensor(a: Tensor, b: Tensor, kh: Tensor, kw: Tensor) -> Tensor:
    """``Σ_r a_r ⊗ b_r ⊗ kh_r ⊗ kw_r`` as one GEMM against the small Khatri-Rao product."""
    rest = torch.einsum("ir,hr,wr->ihwr", b, kh, kw).reshape(-1, a.shape[1])
    return (a @ rest.T).reshape(a.shape[0], b.shape[0], kh.shape[0], kw.shape[0])
