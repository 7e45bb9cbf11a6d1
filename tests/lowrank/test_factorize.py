"""The factorisations as tensor maths: exact at full rank, error falling with the rank,
factor layers that reproduce the conv's stride/padding/dilation, PCA beating SVD on outputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from graphopt.lowrank import factorize as fz

TOL = 1e-4
CONV = {"stride": (2, 1), "padding": (1, 2), "dilation": (1, 2)}


def rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    ref, got = ref.double(), got.double()
    return ((ref - got).abs().max() / ref.abs().max()).item()


def conv_weight(seed: int = 0, shape=(6, 5, 3, 3)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def run_chain(method: str, fact: fz.Factorization, x, bias, stride, padding, dilation):
    """Apply the factor layers the way ``layers.factor_stages`` wires them."""
    (s_h, s_w), (p_h, p_w), (d_h, d_w) = stride, padding, dilation
    w = fact.weights
    b = fact.bias if fact.bias is not None else bias
    if method in ("svd", "pca"):
        return F.conv2d(F.conv2d(x, w[0], None, stride, padding, dilation), w[1], b)
    if method == "tucker":
        core = F.conv2d(F.conv2d(x, w[0]), w[1], None, stride, padding, dilation)
        return F.conv2d(core, w[2], b)
    if method == "cp":
        rank = w[0].shape[0]
        t = F.conv2d(x, w[0])
        t = F.conv2d(t, w[1], None, (s_h, 1), (p_h, 0), (d_h, 1), rank)
        t = F.conv2d(t, w[2], None, (1, s_w), (0, p_w), (1, d_w), rank)
        return F.conv2d(t, w[3], b)
    t = F.conv2d(x, w[0], None, (s_h, 1), (p_h, 0), (d_h, 1))
    return F.conv2d(t, w[1], b, (1, s_w), (0, p_w), (1, d_w))


def factor(method: str, weight, rank, *, bias=None, data=None):
    if method == "svd":
        return fz.svd(weight, rank)
    if method == "tucker":
        return fz.tucker2(weight, rank)
    if method == "cp":
        return fz.cp(weight, rank)
    if method == "spatial_svd":
        return fz.spatial_svd(weight, rank)
    y = F.conv2d(data, weight, bias, **CONV).movedim(1, -1).reshape(-1, weight.shape[0]).double()
    return fz.pca(weight, bias, y.mean(0), torch.cov(y.T, correction=0), rank)


FULL = {"svd": 6, "tucker": (6, 5), "cp": 45, "spatial_svd": 15, "pca": 6}


@pytest.mark.parametrize("method", list(FULL))
def test_full_rank_reproduces_the_conv(method: str) -> None:
    weight, bias = conv_weight(), torch.randn(6)
    x = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(1))
    fact = factor(method, weight, FULL[method], bias=bias, data=x)
    assert fact.error <= TOL
    reference = F.conv2d(x, weight, bias, **CONV)
    assert rel(reference, run_chain(method, fact, x, bias, *CONV.values())) <= TOL
    other = torch.randn(3, 5, 7, 8)  # PCA at full rank is exact off the calibration data too
    reference = F.conv2d(other, weight, bias, **CONV)
    assert rel(reference, run_chain(method, fact, other, bias, *CONV.values())) <= TOL


def test_full_rank_svd_reproduces_a_linear() -> None:
    weight = torch.randn(7, 4)
    fact = fz.svd(weight, 4)
    first, second = fact.weights
    assert first.shape == (4, 4) and second.shape == (7, 4)
    x = torch.randn(3, 4)
    assert rel(x @ weight.T, (x @ first.T) @ second.T) <= TOL


@pytest.mark.parametrize(
    ("method", "ranks"),
    [
        ("svd", [1, 2, 3, 4, 5, 6]),
        ("tucker", [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 5)]),
        ("cp", [2, 6, 12, 24, 45]),
        ("spatial_svd", [1, 3, 6, 9, 12, 15]),
    ],
)
def test_weight_error_decreases_with_rank(method: str, ranks) -> None:
    weight = conv_weight(seed=2)
    errors = [factor(method, weight, r).error for r in ranks]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] <= TOL


def test_pca_output_error_decreases_with_rank_and_matches_its_report() -> None:
    weight, bias = conv_weight(seed=3), torch.randn(6)
    x = torch.randn(4, 5, 10, 10)
    y = F.conv2d(x, weight, bias, **CONV)
    errors = []
    for rank in range(1, 7):
        fact = factor("pca", weight, rank, bias=bias, data=x)
        measured = torch.linalg.norm(y - run_chain("pca", fact, x, bias, *CONV.values()))
        assert measured / torch.linalg.norm(y) == pytest.approx(fact.error, abs=1e-5)
        errors.append(fact.error)
    assert all(a > b for a, b in itertools.pairwise(errors))


def test_tucker2_matches_tensorly_partial_tucker() -> None:
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    weight = conv_weight(seed=4, shape=(12, 10, 3, 3)).double()
    (core, factors), _ = partial_tucker(weight.numpy(), rank=[5, 4], modes=[0, 1])
    approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    theirs = fz.relative_error(weight, torch.from_numpy(approx))
    ours = fz.tucker2(weight, (5, 4)).error
    assert ours == pytest.approx(theirs, rel=2e-3)


@pytest.mark.filterwarnings("ignore::UserWarning")  # tensorly's SVD init on the 3-wide modes
@pytest.mark.parametrize("rank", [4, 16, 40])
def test_cp_als_is_as_good_as_tensorly_parafac(rank: int) -> None:
    import tensorly as tl
    from tensorly.decomposition import parafac

    weight = conv_weight(seed=7, shape=(16, 12, 3, 3)).double()
    cp_tensor = parafac(weight.numpy(), rank, n_iter_max=100, init="svd", tol=1e-7, random_state=0)
    theirs = fz.relative_error(weight, torch.from_numpy(tl.cp_to_tensor(cp_tensor)))
    assert fz.cp(weight, rank).error <= theirs * 1.02


def test_pca_beats_weight_svd_on_correlated_inputs() -> None:
    """Inputs near a 3-D subspace: PCA spends rank on the excited directions, SVD cannot."""
    gen = torch.Generator().manual_seed(5)
    weight, bias = torch.randn(32, 24, generator=gen), torch.randn(32, generator=gen)
    basis = torch.randn(3, 24, generator=gen)

    def sample(n: int) -> torch.Tensor:
        return torch.randn(n, 3, generator=gen) @ basis + 0.05 * torch.randn(n, 24, generator=gen)

    calibration, held_out = sample(512), sample(256)
    y = calibration.double() @ weight.double().T + bias.double()
    mean, cov = y.mean(0), torch.cov(y.T, correction=0)
    expected = held_out @ weight.T + bias
    for rank in (2, 3, 4, 8):
        p, s = fz.pca(weight, bias, mean, cov, rank), fz.svd(weight, rank)
        pca_out = held_out @ p.weights[0].T @ p.weights[1].T + p.bias
        svd_out = held_out @ s.weights[0].T @ s.weights[1].T + bias
        pca_err = torch.linalg.norm(pca_out - expected) / torch.linalg.norm(expected)
        svd_err = torch.linalg.norm(svd_out - expected) / torch.linalg.norm(expected)
        assert pca_err < svd_err, (rank, pca_err, svd_err)
        if rank >= 3:  # the signal's dimension: only the 5 % noise is left
            assert pca_err < 0.1 < 0.4 < svd_err, (rank, pca_err, svd_err)


def test_cp_at_exact_rank_is_built_directly_for_wide_and_tall_weights() -> None:
    for shape in ((3, 5, 3, 2), (5, 3, 1, 3)):
        weight = conv_weight(seed=6, shape=shape)
        rank = fz.cp_exact_rank(weight)
        assert rank == min(shape[:2]) * shape[2] * shape[3]
        assert fz.cp(weight, rank + 2).error <= 1e-12
