"""Knowledge-distillation losses (Hinton et al. 2015; FitNets, Romero et al. 2015).

With student logits ``s``, teacher logits ``t``, temperature ``T`` and class axis last:

- soft targets: ``L_soft = T² · KL(p_T ‖ q_T)``, ``p_T = softmax(t / T)``,
  ``q_T = softmax(s / T)``, averaged over the rows (every position of a sequence is a row).
  ``T²`` keeps the gradient's scale independent of ``T``: ``∂L_soft/∂s = T (q_T − p_T)``,
  which for large ``T`` tends to ``(s − t) / N_classes`` (logit matching), not to 0.
- hard labels: ``L_hard = CE(s, y)`` when the batch has labels.
- total: ``L = α · L_hard + (1 − α) · L_soft`` with labels, ``L = L_soft`` without, plus
  ``β · mean_k MSE(f_k^student, f_k^teacher)`` over the matched feature maps (FitNets' hint
  loss without a regressor: the features must have the same shape).

The KL direction is the usual one, teacher ‖ student: the student is pushed to cover every
class the teacher gives mass to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LossParts", "distillation_loss", "feature_loss", "hard_label_loss", "soft_target_loss"]


@dataclass(frozen=True)
class LossParts:
    """The total loss (differentiable) and its parts (None when absent)."""

    total: Tensor
    soft: Tensor
    hard: Tensor | None = None
    feature: Tensor | None = None


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, mean over rows (all axes but the last)."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher logits differ in shape: {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}"
        )
    classes = student.shape[-1]
    log_q = F.log_softmax(_wide(student.reshape(-1, classes)) / temperature, dim=-1)
    log_p = F.log_softmax(_wide(teacher.reshape(-1, classes)) / temperature, dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    return kl * temperature**2


def hard_label_loss(student: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy with class indices (any leading shape) or class probabilities."""
    classes = student.shape[-1]
    logits = _wide(student.reshape(-1, classes))
    if labels.is_floating_point() and labels.shape == student.shape:
        return F.cross_entropy(logits, labels.reshape(-1, classes).to(logits.dtype))
    return F.cross_entropy(logits, labels.reshape(-1).long())


def feature_loss(student: Mapping[str, Tensor], teacher: Mapping[str, Tensor]) -> Tensor:
    """Mean over the names of ``MSE(student[name], teacher[name])``; shapes must match."""
    if set(student) != set(teacher) or not student:
        raise ValueError(f"feature names differ: {sorted(student)} and {sorted(teacher)}")
    losses = [F.mse_loss(_wide(student[k]), _wide(teacher[k])) for k in sorted(student)]
    return torch.stack(losses).mean()


def distillation_loss(
    student: Tensor,
    teacher: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    student_features: Mapping[str, Tensor] | None = None,
    teacher_features: Mapping[str, Tensor] | None = None,
    feature_weight: float = 1.0,
) -> LossParts:
    """``α · CE + (1 − α) · T² KL`` (just the KL term without labels) ``+ β · feature MSE``.

    With ``alpha == 0`` the labels are not used at all (``hard`` is None).
    """
    soft = soft_target_loss(student, teacher, temperature)
    hard = hard_label_loss(student, labels) if labels is not None and alpha > 0 else None
    total = soft if hard is None else alpha * hard + (1 - alpha) * soft
    feature = None
    if student_features:
        feature = feature_loss(student_features, teacher_features or {})
        total = total + feature_weight * feature
    return LossParts(total=total, soft=soft, hard=hard, feature=feature)


def _wide(x: Tensor) -> Tensor:
    """float16/bfloat16 → float32 for the loss (softmax and sums lose too much in them)."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x
