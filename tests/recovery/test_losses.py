"""The distillation losses against values computed by hand (plain Python maths, no torch)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from graphopt.recovery.losses import (
    distillation_loss,
    feature_loss,
    hard_label_loss,
    soft_target_loss,
)

STUDENT = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
TEACHER = [[2.0, 0.0, 1.0], [0.5, 0.5, 3.0]]


def _softmax(row: list[float], temperature: float) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _kl_by_hand(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """Mean over rows of KL(softmax(teacher/T) ‖ softmax(student/T))."""
    rows = []
    for s_row, t_row in zip(student, teacher, strict=True):
        p, q = _softmax(t_row, t), _softmax(s_row, t)
        rows.append(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True)))
    return sum(rows) / len(rows)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_target_loss_is_t_squared_times_kl(temperature: float) -> None:
    got = soft_target_loss(
        torch.tensor(STUDENT, dtype=torch.float64),
        torch.tensor(TEACHER, dtype=torch.float64),
        temperature,
    )
    expected = temperature**2 * _kl_by_hand(STUDENT, TEACHER, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_soft_target_loss_is_zero_for_identical_logits_and_positive_otherwise() -> None:
    logits = torch.tensor(STUDENT, dtype=torch.float64)
    assert soft_target_loss(logits, logits.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_target_loss(logits, torch.tensor(TEACHER, dtype=torch.float64), 3.0).item() > 0


def test_t_squared_keeps_the_gradient_scale_at_high_temperature() -> None:
    """Without T² the gradient would vanish like 1/T; with it, it tends to (s − t)/(C·N)."""
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor(TEACHER, dtype=torch.float64)
    soft_target_loss(student, teacher, 1000.0).backward()
    s, t = torch.tensor(STUDENT, dtype=torch.float64), teacher
    centred = (s - s.mean(-1, keepdim=True)) - (t - t.mean(-1, keepdim=True))
    expected = centred / (3 * 2)  # C = 3 classes, N = 2 rows
    assert torch.allclose(student.grad, expected, atol=1e-4)


def test_sequence_logits_average_over_every_position() -> None:
    student = torch.tensor(
        [STUDENT], dtype=torch.float64
    )  # (1, 2, 3): one sequence of two positions
    teacher = torch.tensor([TEACHER], dtype=torch.float64)
    got = soft_target_loss(student, teacher, 2.0)
    assert got.item() == pytest.approx(4.0 * _kl_by_hand(STUDENT, TEACHER, 2.0), rel=1e-12)


def test_hard_label_loss_by_hand() -> None:
    labels = [2, 1]
    got = hard_label_loss(torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(labels))
    expected = -sum(
        math.log(_softmax(row, 1.0)[y]) for row, y in zip(STUDENT, labels, strict=True)
    ) / len(labels)
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_mixes_hard_and_soft(alpha: float) -> None:
    s, t, y = (
        torch.tensor(STUDENT, dtype=torch.float64),
        torch.tensor(TEACHER, dtype=torch.float64),
        torch.tensor([2, 1]),
    )
    parts = distillation_loss(s, t, y, temperature=2.0, alpha=alpha)
    soft = 4.0 * _kl_by_hand(STUDENT, TEACHER, 2.0)
    hard = F.cross_entropy(s, y).item()
    assert parts.soft.item() == pytest.approx(soft, rel=1e-12)
    if alpha == 0:
        assert parts.hard is None  # labels unused
    else:
        assert parts.hard.item() == pytest.approx(hard, rel=1e-12)
    assert parts.total.item() == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-12)
    assert parts.feature is None


def test_without_labels_the_loss_is_the_soft_term_whatever_alpha() -> None:
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    parts = distillation_loss(s, t, None, temperature=2.0, alpha=0.9)
    assert parts.hard is None
    assert parts.total.item() == pytest.approx(parts.soft.item())


def test_feature_term_is_weighted_mean_mse_over_names() -> None:
    s, t = torch.tensor(STUDENT, dtype=torch.float64), torch.tensor(TEACHER, dtype=torch.float64)
    fs = {"a": torch.zeros(2, 4), "b": torch.ones(2, 3)}
    ft = {"a": torch.full((2, 4), 2.0), "b": torch.ones(2, 3)}  # MSEs 4 and 0 → mean 2
    assert feature_loss(fs, ft).item() == pytest.approx(2.0)
    parts = distillation_loss(
        s, t, None, temperature=1.0, student_features=fs, teacher_features=ft, feature_weight=0.5
    )
    assert parts.feature.item() == pytest.approx(2.0)
    assert parts.total.item() == pytest.approx(parts.soft.item() + 0.5 * 2.0, rel=1e-12)


def test_mismatched_shapes_and_names_raise() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        soft_target_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)
    with pytest.raises(ValueError, match="feature names differ"):
        feature_loss({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
