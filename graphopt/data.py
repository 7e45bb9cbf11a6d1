"""Task data handed to passes: training batches, calibration inputs, an evaluation function.

A recipe's ``data:`` names a callable returning a ``TaskData``; the runner puts its fields into
the ``PassContext`` (``ctx.train``, ``ctx.calibration``, ``ctx.evaluate``, ``ctx.validate``), where
passes such as
``recover`` (fine-tuning), ``low_rank`` with ``method: pca`` and quantisation read them.

Every iterable here must be *re-iterable* (a list, a ``DataLoader``, a ``Batches``): passes
make several passes over it, and a generator would be empty the second time.

Data is checked at the door, where it is consumed (``input_batches``, ``check_batch``), because
bad data otherwise fails far from its cause: one ``inf`` in a calibration batch gives an all-NaN
int8 model that still "runs", and a batch with the wrong number of channels fails deep in
torch with ``Guard failed: input.size()[1] == 3``. Each error names the batch index and the
mismatch, and is a ``RecipeError`` (bad user data, not a bug in a pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule
from torch.fx.experimental.symbolic_shapes import is_concrete_int

from graphopt.errors import RecipeError

__all__ = [
    "Batches",
    "TaskData",
    "batches",
    "calibration_batches",
    "check_batch",
    "check_finite",
    "count_nonfinite",
    "input_batches",
]


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


def input_batches(
    calibration: object,
    example_inputs: Sequence[Tensor] | None = None,
    *,
    graph: GraphModule | None = None,
    what: str = "calibration",
) -> Iterator[tuple[Tensor, ...]]:
    """Normalise calibration data to input tuples (a bare tensor is one input) and check it.

    Every batch must be finite (``RecipeError`` "calibration batch 3 holds inf"). With
    ``example_inputs`` or ``graph`` each batch must also fit the model (``check_batch``): the
    graph's placeholders say which dimensions are static; without a graph, the example inputs
    do, with the first (batch) dimension free. Checked lazily, batch by batch, so a long
    data loader is not run twice.
    """
    if isinstance(calibration, Tensor):
        raise TypeError(
            f"{what} must be an iterable of input tuples such as [(x1,), (x2,)], "
            "got a single tensor; wrap it as [(x,)]"
        )
    expected = _expected_inputs(example_inputs, graph)
    for index, batch in enumerate(calibration):  # type: ignore[attr-defined]
        if isinstance(batch, Tensor):
            batch = (batch,)
        elif isinstance(batch, Sequence) and all(isinstance(t, Tensor) for t in batch):
            batch = tuple(batch)
        else:
            raise TypeError(
                f"{what} must yield tensors or tuples of tensors (the model's inputs), "
                f"got {type(batch).__name__}"
            )
        check_finite(batch, f"{what} batch {index}")
        if expected is not None:
            _check_fits(batch, expected, f"{what} batch {index}")
        yield batch


def check_batch(
    batch: Sequence[Tensor],
    example_inputs: Sequence[Tensor] | None = None,
    *,
    graph: GraphModule | None = None,
    label: str = "calibration batch 0",
) -> None:
    """Raise ``RecipeError`` naming ``label`` unless ``batch`` is finite and fits the model.

    Fits: as many inputs as the model takes, each of the same rank, equal in every dimension
    the graph is static on, and of the same dtype kind (float, complex, integer, bool). Float
    widths must match too: a float64 batch (``torch.from_numpy`` of a NumPy array) fails in
    a float32 conv with "Input type (double) and bias type (float) should be the same", since
    ATen does not promote between an input and a weight; integer widths may differ (embedding
    takes int32 and int64 indices).
    """
    check_finite(batch, label)
    expected = _expected_inputs(example_inputs, graph)
    if expected is not None:
        _check_fits(tuple(batch), expected, label)


def check_finite(tensors: Sequence[Tensor], label: str) -> None:
    """Raise ``RecipeError`` "<label> holds inf (input 0: 1 inf)" for non-finite values."""
    for position, tensor in enumerate(tensors):
        nan, inf = count_nonfinite(tensor)
        if nan or inf:
            kinds = " and ".join(k for k, n in (("NaN", nan), ("inf", inf)) if n)
            raise RecipeError(
                f"{label} holds {kinds} (input {position}: {nan} NaN, {inf} inf of "
                f"{tensor.numel()} values); graphopt needs finite data: clean or drop it"
            )


def count_nonfinite(tensor: Tensor) -> tuple[int, int]:
    """``(NaN count, ±inf count)`` of a tensor; integer and bool tensors are always (0, 0)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0, 0
    if bool(torch.isfinite(tensor).all()):  # the common case: one reduction, no counting
        return 0, 0
    return int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())


@dataclass(frozen=True)
class _Expected:
    """One model input: its shape (None where the graph is dynamic) and dtype."""

    shape: tuple[int | None, ...]
    dtype: torch.dtype


def _expected_inputs(
    example_inputs: Sequence[Tensor] | None, graph: GraphModule | None
) -> tuple[_Expected, ...] | None:
    """What each input must look like: from the graph's placeholders when they carry values,
    else from the example inputs (the first dimension free, as graphopt.trace makes it)."""
    if graph is not None:
        values = [n.meta.get("val") for n in graph.graph.nodes if n.op == "placeholder"]
        if values and all(isinstance(v, Tensor) for v in values):
            return tuple(_Expected(tuple(_static(d) for d in v.shape), v.dtype) for v in values)
    if example_inputs is None:
        return None
    return tuple(
        _Expected(tuple(None if i == 0 else int(d) for i, d in enumerate(t.shape)), t.dtype)
        for t in example_inputs
    )


def _static(size: int | torch.SymInt) -> int | None:
    """The size of a dimension the graph is static on, None for a dynamic one.

    A dimension export specialised (the model reshapes to a fixed batch) is still a
    ``SymInt`` in the placeholder's value, but one whose expression is a constant.
    """
    if is_concrete_int(size):
        return int(size)
    return None


def _check_fits(batch: tuple[Tensor, ...], expected: tuple[_Expected, ...], label: str) -> None:
    if len(batch) != len(expected):
        raise RecipeError(
            f"{label} has {len(batch)} input(s), the model takes {len(expected)} (as its "
            "example inputs); each batch is a tuple of the model's inputs"
        )
    for position, (tensor, want) in enumerate(zip(batch, expected, strict=True)):
        where = f"{label}, input {position}"
        wanted = "(" + ", ".join("*" if d is None else str(d) for d in want.shape) + ")"
        got = tuple(tensor.shape)
        if len(got) != len(want.shape):
            raise RecipeError(
                f"{where}: shape {got} has rank {len(got)}, the model takes rank "
                f"{len(want.shape)} {wanted} (* = any size)"
            )
        for dim, (size, need) in enumerate(zip(got, want.shape, strict=True)):
            if need is not None and size != need:
                raise RecipeError(
                    f"{where}: shape {got} does not fit the model's {wanted} (* = any size): "
                    f"dimension {dim} is {size}, the graph is static at {need}"
                )
        kind, want_kind = _kind(tensor.dtype), _kind(want.dtype)
        width_differs = kind == "float" and tensor.dtype != want.dtype
        if kind != want_kind or width_differs:
            raise RecipeError(
                f"{where}: dtype {_name(tensor.dtype)} ({kind}), the model takes "
                f"{_name(want.dtype)} ({want_kind}); convert the batch with "
                f".to(torch.{_name(want.dtype)})"
            )


def _kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "integer"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
