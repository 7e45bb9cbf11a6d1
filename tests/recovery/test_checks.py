"""``graphopt.recovery.checks``: what ``distill`` refuses before training, and why it says so."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt.recovery.checks import check_inputs, check_labels, check_models, check_train


def test_labels_in_range_probabilities_and_ignored_ones_pass() -> None:
    check_labels(torch.tensor([0, 2, -100]), classes=3, index=0)  # -100: ignored
    check_labels(torch.full((2, 3), 1 / 3), classes=3, index=0)  # class probabilities
    check_labels(None, classes=3, index=0)
    check_labels(torch.tensor([], dtype=torch.long), classes=3, index=0)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 3]), r"train batch 4: label 3 is out of range for the model's 3"),
        (torch.tensor([-1, 0]), r"label -1 is out of range"),
        (torch.tensor([0.0, float("nan")]), r"train batch 4: the labels hold 1 NaN and 0 inf"),
        (torch.tensor([1 + 0j]), r"neither class indices"),
    ],
)
def test_bad_labels_name_the_batch(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_labels(labels, classes=3, index=4)


def test_non_finite_inputs_name_the_batch_as_a_value_error() -> None:
    check_inputs((torch.zeros(2),), 0)
    with pytest.raises(ValueError, match="train batch 2"):
        check_inputs((torch.tensor([0.0, float("inf")]),), 2)


def test_models_must_be_modules_that_share_no_parameter() -> None:
    student, teacher = nn.Linear(2, 2), nn.Linear(2, 2)
    check_models(student, teacher)
    with pytest.raises(TypeError, match=r"teacher must be a torch\.nn\.Module"):
        check_models(student, "teacher")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share parameters"):
        check_models(student, nn.Sequential(student))


def test_train_must_be_re_iterable() -> None:
    check_train([(torch.zeros(1), None)])
    with pytest.raises(TypeError, match="one-shot"):
        check_train(iter([(torch.zeros(1), None)]))
    with pytest.raises(TypeError, match="re-iterable"):
        check_train(torch.zeros(3))
