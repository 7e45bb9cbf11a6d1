"""Rank selection: ratio, energy, EVBMF on planted low-rank matrices, rounding."""

from __future__ import annotations

import pytest
import torch

from graphopt.lowrank.ranks import evbmf_rank, rank_for_energy, rank_for_ratio, round_up


def test_ratio_rounds_up_and_keeps_at_least_one() -> None:
    assert rank_for_ratio(64, 0.5) == 32
    assert rank_for_ratio(10, 0.33) == 4
    assert rank_for_ratio(10, 0.01) == 1
    assert rank_for_ratio(7, 1.0) == 7
    assert rank_for_ratio(10, 0.3) == 3  # 0.3·10 is 3.0000000000000004 in floats


def test_energy_is_the_smallest_rank_keeping_that_fraction() -> None:
    s = torch.tensor([1.0, 3.0, 2.0])  # squares 9, 4, 1 of 14 once sorted
    assert rank_for_energy(s, 9 / 14) == 1
    assert rank_for_energy(s, 9 / 14 + 1e-6) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 1.0) == 3
    assert rank_for_energy(torch.zeros(4), 0.9) == 1


def test_round_up_to_a_multiple_capped_at_full() -> None:
    assert round_up(13, 8, 64) == 16
    assert round_up(16, 8, 64) == 16
    assert round_up(61, 8, 62) == 62
    assert round_up(5, 1, 64) == 5


@pytest.mark.parametrize(
    ("rows", "cols", "rank", "noise"),
    [
        (50, 80, 5, 0.1),
        (80, 50, 5, 0.1),
        (64, 576, 12, 0.05),
        (128, 128, 20, 0.5),
        (30, 30, 3, 0.01),
    ],
)
def test_evbmf_recovers_a_planted_rank(rows: int, cols: int, rank: int, noise: float) -> None:
    gen = torch.Generator().manual_seed(rows + cols)
    signal = torch.randn(rows, rank, generator=gen) @ torch.randn(rank, cols, generator=gen)
    assert evbmf_rank(signal + noise * torch.randn(rows, cols, generator=gen)) == rank


def test_evbmf_finds_nothing_in_pure_noise() -> None:
    noise = torch.randn(64, 576, generator=torch.Generator().manual_seed(0))
    assert evbmf_rank(noise) == 0
    assert evbmf_rank(torch.zeros(8, 9)) == 0
