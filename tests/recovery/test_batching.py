"""``graphopt.recovery.batching``: counting, unpacking and cycling through ``train``."""

from __future__ import annotations

import itertools

import pytest
import torch

from graphopt.recovery.batching import count_batches, cycle, split_batch


class _NoLen:
    """Re-iterable without ``__len__``, like an iterable dataset."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        return iter(range(self.n))


def test_count_batches_with_and_without_len() -> None:
    assert count_batches([1, 2, 3]) == 3
    assert count_batches(_NoLen(4)) == 4
    with pytest.raises(ValueError, match="no batches"):
        count_batches([])


def test_cycle_yields_the_index_in_the_pass_and_can_skip_the_first_batch() -> None:
    train = ["a", "b", "c"]
    assert list(itertools.islice(cycle(train, False), 5)) == [
        (0, "a"),
        (1, "b"),
        (2, "c"),
        (0, "a"),
        (1, "b"),
    ]
    assert list(itertools.islice(cycle(train, True), 4)) == [
        (1, "b"),
        (2, "c"),
        (1, "b"),
        (2, "c"),
    ]


def test_split_batch_makes_inputs_a_tuple_and_refuses_malformed_batches() -> None:
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    inputs, labels = split_batch((x, y))
    assert isinstance(inputs, tuple) and inputs[0] is x and labels is y
    assert split_batch(((x, x), None)) == ((x, x), None)
    with pytest.raises(TypeError, match=r"\(inputs, labels\) pairs"):
        split_batch(x)
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        split_batch(([1, 2], None))
    with pytest.raises(TypeError, match="labels must be a tensor or None"):
        split_batch((x, [0, 1]))
