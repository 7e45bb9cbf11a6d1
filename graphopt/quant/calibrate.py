"""Run the float graph on calibration data and feed each site's values to its observer.

One interpreted run per batch; a site's value is observed right after its node runs (the
graph is functional by then, see ``functionalize.py``). ``take_samples`` cuts the data at a
number of samples (along each input's first dimension) so a recipe's ``samples: 128`` means
128 images whatever the batch size.

Every observed value must be finite: one ``inf`` reaching an observer makes its range, and so
the scale and zero point of that site, ``inf``/NaN, and the int8 model computes NaN
everywhere. Calibration *inputs* are checked where they are read (``graphopt.data``); here a
site whose value is non-finite on finite inputs (the float model overflows) is a
``NumericsError`` naming the batch and the node, raised before any scale is computed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor
from torch.fx import GraphModule, Interpreter, Node

from graphopt.data import count_nonfinite
from graphopt.errors import NumericsError
from graphopt.progress import counted
from graphopt.quant.observers import Observer

__all__ = ["STAGE", "observe", "take_samples"]

STAGE = "quantize"  # the pass these errors are raised for: the only caller of calibration


class _Observing(Interpreter):
    def __init__(self, gm: GraphModule, observers: Mapping[str, Observer]) -> None:
        super().__init__(gm)
        self.observers = observers
        self.batch = 0

    def run_node(self, n: Node) -> object:
        result = super().run_node(n)
        observer = self.observers.get(n.name)
        if observer is not None and isinstance(result, Tensor):
            nan, inf = count_nonfinite(result)
            if nan or inf:
                raise NumericsError(
                    STAGE,
                    f"calibration batch {self.batch}: the output of node {n.name} holds "
                    f"{nan} NaN and {inf} inf on finite inputs (the float model overflows "
                    "there), so its quantization scale would be non-finite; drop that batch "
                    "or keep the layer in float (the pass's skip option)",
                )
            observer.update(result)
        return result


def observe(
    gm: GraphModule,
    observers: Mapping[str, Observer],
    batches: Iterable[tuple[Tensor, ...]],
    *,
    progress: bool = False,
) -> int:
    """Run every batch through ``gm``; returns the number of batches seen."""
    batches = list(batches)
    runner = _Observing(gm, observers)
    with torch.no_grad(), counted("calibrating", len(batches), enabled=progress) as advance:
        for index, inputs in enumerate(batches):
            runner.batch = index
            runner.run(*inputs)
            advance()
    return len(batches)


def take_samples(
    batches: Iterable[tuple[Tensor, ...]], samples: int
) -> Iterator[tuple[Tensor, ...]]:
    """The first ``samples`` samples of ``batches`` (the last batch sliced to fit)."""
    left = samples
    for inputs in batches:
        if left <= 0:
            return
        size = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
        if size > left:
            inputs = tuple(t[:left] for t in inputs)
            size = left
        left -= size
        yield inputs
