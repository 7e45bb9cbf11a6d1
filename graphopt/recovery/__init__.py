"""Accuracy recovery after compression: knowledge-distillation fine-tuning.

``distill(student, teacher, train, ...)`` is the Python API (the ``recover`` pass and
iterative pruning's ``callback`` use it); ``graphopt.recovery.losses`` holds the losses and
their maths. The losses module is not called ``distill`` so that ``graphopt.recovery.distill``
is unambiguously the function (``import graphopt.recovery.distill as m`` would otherwise bind
the function, not the module).
"""

from graphopt.recovery.losses import (
    LossParts,
    distillation_loss,
    feature_loss,
    hard_label_loss,
    soft_target_loss,
)
from graphopt.recovery.trainer import DistillConfig, DistillHistory, distill

__all__ = [
    "DistillConfig",
    "DistillHistory",
    "LossParts",
    "distill",
    "distillation_loss",
    "feature_loss",
    "hard_label_loss",
    "soft_target_loss",
]
