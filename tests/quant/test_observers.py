"""Observers and quantization parameters: ranges, clipping, scales, zero points."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from graphopt.quant.observers import OBSERVERS, HistogramObserver, make_observer
from graphopt.quant.qparams import activation_qparams, quantize_weight


def _heavy_tailed(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.randn(4096, generator=gen) for _ in range(4)]
    batches[2][0] = 40.0  # one outlier
    return batches


def test_minmax_sees_the_extremes() -> None:
    obs = make_observer("minmax")
    for batch in (torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 3.0])):
        obs.update(batch)
    assert obs.range(256) == (-1.0, 3.0)


def test_moving_average_damps_one_batch_outlier() -> None:
    obs = make_observer("moving_average")
    for batch in _heavy_tailed():
        obs.update(batch)
    lo, hi = obs.range(256)
    assert hi < 10.0 and lo < 0.0


@pytest.mark.parametrize("name", ["percentile", "entropy"])
def test_histogram_observers_clip_the_outlier(name: str) -> None:
    obs = make_observer(name)
    for batch in _heavy_tailed():
        obs.update(batch)
    lo, hi = obs.range(256)
    assert -40.0 < lo < 0.0 < hi < 20.0, (lo, hi)


@pytest.mark.parametrize("name", sorted(OBSERVERS))
def test_every_observer_covers_a_uniform_range(name: str) -> None:
    """With no outliers the chosen range is (nearly) the data's range."""
    obs = make_observer(name)
    obs.update(torch.linspace(0.0, 6.0, 10_000))
    lo, hi = obs.range(256)
    assert lo <= 0.05 and hi >= 5.0, (name, lo, hi)


def test_mse_clips_heavy_tails_at_low_bit_width_but_not_a_lone_outlier_at_8_bits() -> None:
    """The MSE range trades rounding inside against clipping outside: at 4 bits a Laplace
    tail is worth clipping; at 8 bits one outlier's squared error outweighs the rounding."""
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((50_000,))
    obs = make_observer("mse")
    obs.update(laplace)
    lo, hi = obs.range(16)
    assert hi < 0.8 * laplace.max().item() and lo > 0.8 * laplace.min().item()
    outlier = make_observer("mse")
    for batch in _heavy_tailed():
        outlier.update(batch)
    assert outlier.range(256)[1] > 30.0


def test_histogram_rebinning_keeps_the_mass() -> None:
    obs = make_observer("percentile")
    assert isinstance(obs, HistogramObserver)
    obs.update(torch.rand(1000))
    obs.update(torch.rand(1000) * 10 - 5)  # widens the range both ways
    assert obs.counts.sum() == pytest.approx(2000)
    assert obs.lo <= -4.9 and obs.hi >= 4.9


def test_unknown_observer_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown observer"):
        make_observer("kl")


def test_uint8_qparams_make_zero_exact_and_cover_the_range() -> None:
    p = activation_qparams(-1.3, 4.2, "uint8")
    assert (p.qmin, p.qmax, p.dtype) == (0, 255, torch.uint8)
    assert 0 <= p.zero_point <= 255
    assert p.scale * (p.qmax - p.zero_point) >= 4.2 - p.scale / 2
    assert p.scale * (p.zero_point - p.qmin) >= 1.3 - p.scale / 2
    relu = activation_qparams(0.0, 6.0, "uint8")
    assert relu.zero_point == 0 and relu.scale == pytest.approx(6.0 / 255)


def test_int8_qparams_are_symmetric() -> None:
    p = activation_qparams(-1.0, 3.0, "int8")
    assert p.zero_point == 0 and p.scale == pytest.approx(3.0 / 127) and p.dtype == torch.int8


def test_degenerate_range_has_scale_one() -> None:
    """A tensor that is always zero (a dead ReLU) must not get a tiny scale: ORT quantizes
    the next layer's bias with s_x · s_w into int32, which a tiny scale overflows."""
    assert activation_qparams(0.0, 0.0).scale == 1.0
    assert activation_qparams(0.0, 0.0, "int8").scale == 1.0
    _q, scales, _zp = quantize_weight(torch.zeros(2, 3))
    assert torch.all(scales == 1.0)


def test_per_channel_weight_quantization_error_is_half_a_step() -> None:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 4, 3, 3, generator=gen) * torch.logspace(-3, 1, 8).view(-1, 1, 1, 1)
    weight[3] = 0.0  # an all-zero channel must not divide by zero
    q, scales, zero_points = quantize_weight(weight)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    assert torch.all(zero_points == 0) and torch.all(scales > 0) and scales[3] == 1.0
    restored = q.float() * scales.view(-1, 1, 1, 1)
    error = (restored - weight).abs().amax(dim=(1, 2, 3))
    assert torch.all(error <= scales / 2 + 1e-7)
    assert np.allclose(scales[:3].numpy() * 127, weight[:3].abs().amax(dim=(1, 2, 3)).numpy())
