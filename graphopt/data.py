"""Task data handed to passes: training batches, calibration inputs, an evaluation function.

A recipe's ``data:`` names a callable returning a ``TaskData``; the runner puts its fields into
``PassContext.extras`` (``"train"``, ``"calibration"``, ``"evaluate"``, ``"validate"``), where
passes such as
``recover`` (fine-tuning), ``low_rank`` with ``method: pca`` and quantisation read them.

Every iterable here must be *re-iterable* (a list, a ``DataLoader``, a ``Batches``): passes
make several passes over it, and a generator would be empty the second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batches", "TaskData", "batches", "calibration_batches", "input_batches"]


@dataclass(frozen=True)
class TaskData:
    """What a task offers compression passes; every field is optional.

    ``train``: re-iterable of ``(inputs, labels)``, inputs a tensor or a tuple of tensors,
    labels a tensor or None. ``calibration``: re-iterable of input tuples ``(x,)`` (no labels).
    ``evaluate``: ``callable(model) -> float | {name: float}``, higher is better unless the
    pass is told otherwise: the metric the report shows (on test data).
    ``validate``: the same kind of callable on held-out data that is not the test set; passes
    that *choose* (recovery's best checkpoint, a search's sensitivity) use it, so the test
    metric is never optimised. Without it they fall back to ``evaluate``.
    """

    train: Iterable[tuple[Any, Tensor | None]] | None = None
    calibration: Iterable[tuple[Tensor, ...]] | None = None
    evaluate: Callable[[torch.nn.Module], float | dict[str, float]] | None = None
    validate: Callable[[torch.nn.Module], float | dict[str, float]] | None = None


class Batches:
    """Mini-batches of ``(x, y)`` (or ``(x,)`` with ``labels=False``), re-iterable.

    With ``shuffle`` the order of pass ``k`` over the data is drawn from ``seed + k``: a new
    order each epoch, and the same sequence of orders for the same seed.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        labels: bool = True,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if y is not None and len(y) != len(x):
            raise ValueError(f"x and y differ in length: {len(x)} and {len(y)}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.labels = labels
        self._epoch = 0

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        n = len(self.x)
        if self.shuffle:
            order = torch.randperm(
                n, generator=torch.Generator().manual_seed(self.seed + self._epoch)
            )
            self._epoch += 1
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            if not self.labels:
                yield (self.x[index],)
            else:
                yield self.x[index], (None if self.y is None else self.y[index])


def batches(
    x: Tensor, y: Tensor | None, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Batches:
    """Re-iterable ``(x_batch, y_batch)`` pairs (``y_batch`` None when ``y`` is None)."""
    return Batches(x, y, batch_size=batch_size, shuffle=shuffle, seed=seed)


def calibration_batches(x: Tensor, batch_size: int) -> Batches:
    """Re-iterable input tuples ``(x_batch,)`` in order: calibration data, no labels."""
    return Batches(x, batch_size=batch_size, labels=False)


def input_batches(calibration: object) -> Iterable[tuple[Tensor, ...]]:
    """Normalise calibration data: an iterable of input tuples (a bare tensor is one input)."""
    if isinstance(calibration, Tensor):
        raise TypeError(
            "calibration must be an iterable of input tuples such as [(x1,), (x2,)], "
            "got a single tensor; wrap it as [(x,)]"
        )
    for batch in calibration:
        if isinstance(batch, Tensor):
            yield (batch,)
        elif isinstance(batch, Sequence) and all(isinstance(t, Tensor) for t in batch):
            yield tuple(batch)
        else:
            raise TypeError(
                "calibration must yield tensors or tuples of tensors (the model's inputs), "
                f"got {type(batch).__name__}"
            )
