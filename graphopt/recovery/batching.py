"""How ``distill`` walks ``train``: count a pass, unpack a batch, cycle through the passes.

Why an index travels with each batch: the per-batch checks (``graphopt.recovery.checks``) name
a bad batch by its position in a pass over ``train``, which is what a user can look up in
their data; a global step number is not.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from torch import Tensor

__all__ = ["count_batches", "cycle", "split_batch"]


def count_batches(train: Iterable) -> int:
    """Batches in one pass: ``len`` when ``train`` has one, else counted by iterating once."""
    try:
        n = len(train)  # type: ignore[arg-type]
    except TypeError:
        n = sum(1 for _ in train)
    if n < 1:
        raise ValueError("train yielded no batches")
    return n


def split_batch(batch: object) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """``(inputs, labels)`` with inputs always a tuple; a malformed batch is a ``TypeError``."""
    if not (isinstance(batch, Sequence) and len(batch) == 2):
        raise TypeError(
            "train must yield (inputs, labels) pairs, inputs a tensor or a tuple of tensors "
            f"and labels a tensor or None; got {type(batch).__name__}"
        )
    inputs, labels = batch
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    elif not (isinstance(inputs, Sequence) and all(isinstance(t, Tensor) for t in inputs)):
        raise TypeError(
            f"train batch inputs must be a tensor or a tuple of tensors, got "
            f"{type(inputs).__name__}"
        )
    if labels is not None and not isinstance(labels, Tensor):
        raise TypeError(f"train batch labels must be a tensor or None, got {type(labels).__name__}")
    return tuple(inputs), labels


def cycle(train: Iterable, skip_first: bool) -> Iterator[tuple[int, object]]:
    """``(index in the pass over train, batch)`` forever (the index names a bad batch).

    ``skip_first`` leaves out each pass's first batch: without ``evaluate`` it is the held-out
    batch that scores checkpoints.
    """
    while True:
        for i, batch in enumerate(train):
            if not (skip_first and i == 0):
                yield i, batch
