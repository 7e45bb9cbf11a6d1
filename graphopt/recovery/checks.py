"""What ``distill`` checks before training on them: the two models, ``train``, each batch.

Why check up front and per batch: a bad model pair or a one-shot iterator fails late and
obscurely (a teacher silently trained, an empty second epoch), and a NaN input or an
out-of-range label surfaces as a NaN loss (with advice to lower the learning rate) or as a
device-side assert deep in torch, naming neither the batch nor the cause. Every error here
names the batch by its index in a pass over ``train``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from graphopt.data import check_finite, count_nonfinite
from graphopt.errors import RecipeError

__all__ = ["check_inputs", "check_labels", "check_models", "check_train"]

_IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: such labels are skipped


def check_models(student: nn.Module, teacher: nn.Module) -> None:
    """Both are modules, and they share no parameter (training would change the teacher)."""
    for role, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{role} must be a torch.nn.Module, got {type(model).__name__}")
    shared = {id(p) for p in student.parameters()} & {id(p) for p in teacher.parameters()}
    if student is teacher or shared:
        raise ValueError(
            "student and teacher share parameters: training would change the teacher; pass "
            "the original model as teacher and a copy (or the compressed graph) as student"
        )


def check_train(train: object) -> None:
    """``train`` is re-iterable: a one-shot iterator would be empty after the first epoch."""
    if isinstance(train, Tensor) or not isinstance(train, Iterable):
        raise TypeError(
            "train must be a re-iterable of (inputs, labels) batches, e.g. a list or a "
            f"DataLoader, got {type(train).__name__}"
        )
    if iter(train) is train:
        raise TypeError(
            f"train must be re-iterable (a list or a DataLoader), got a one-shot "
            f"{type(train).__name__}: it would be empty after the first epoch"
        )


def check_inputs(inputs: tuple[Tensor, ...], index: int) -> None:
    """``ValueError`` "train batch 3 holds NaN (...)": the loss would become NaN and the run
    stop with advice to lower the learning rate, which is not the cause."""
    try:
        check_finite(inputs, f"train batch {index}")
    except RecipeError as exc:
        raise ValueError(str(exc)) from None


def check_labels(labels: Tensor | None, classes: int, index: int) -> None:
    """Class-index labels must lie in ``[0, classes)`` (or be -100, cross-entropy's ignored
    index); probability labels (float, the logits' shape) must be finite.

    Checked before the loss, one ``aminmax`` per batch: out of range, cross-entropy fails
    with a device-side assert on GPU or an ``IndexError`` from deep in torch on CPU, naming
    neither the batch nor the number of classes.
    """
    if labels is None or not labels.numel():
        return
    label = f"train batch {index}"
    if labels.is_complex():
        raise ValueError(
            f"{label}: labels of dtype {labels.dtype} are neither class indices (integers) "
            "nor class probabilities (float, shaped like the logits)"
        )
    if labels.is_floating_point():
        nan, inf = count_nonfinite(labels)
        if nan or inf:
            raise ValueError(f"{label}: the labels hold {nan} NaN and {inf} inf")
        if labels.dim() >= 2 and labels.shape[-1] == classes:
            return  # class probabilities
    valid = labels[labels != _IGNORE_INDEX]
    if not valid.numel():
        return
    lo, hi = (v.item() for v in torch.aminmax(valid.double()))
    if lo < 0 or hi >= classes:
        bad = hi if hi >= classes else lo
        raise ValueError(
            f"{label}: label {bad:g} is out of range for the model's {classes} classes "
            f"(labels must be class indices in [0, {classes - 1}])"
        )
