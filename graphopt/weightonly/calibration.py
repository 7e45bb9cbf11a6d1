"""Input Hessians ``H = 2 XᵀX`` of chosen linear layers on calibration data, for GPTQ.

One interpreted run of the graph per batch; the input of each target ``aten.linear`` is read
when the layer runs, flattened to rows of K features (every token of a sequence is a row) and
folded into a running float32 sum, so memory does not grow with the data. Layers reading the
same tensor (a transformer's query, key and value projections) share one sum. All layers see
the float model's activations (one pass, not GPTQ's layer-by-layer re-run on the quantized
prefix): that costs one calibration run instead of one per layer, and the error each layer
compensates is its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.fx import GraphModule, Interpreter, Node

__all__ = ["collect_hessians"]


class _HessianRecorder(Interpreter):
    def __init__(self, gm: GraphModule, layers: Sequence[Node]) -> None:
        super().__init__(gm)
        self.inputs = {layer: layer.args[0] for layer in layers}
        self.sums: dict[Node, Tensor] = {}
        self.counts: dict[Node, int] = {}

    def run_node(self, n: Node) -> object:
        source = self.inputs.get(n)
        if source is not None and source not in self._done:  # one sum per shared input
            self._done.add(source)
            x = self.env[source].detach().float()
            rows = x.reshape(-1, x.shape[-1])
            outer = rows.T @ rows
            self.sums[source] = self.sums[source] + outer if source in self.sums else outer
            self.counts[source] = self.counts.get(source, 0) + rows.shape[0]
        return super().run_node(n)

    def run(self, *args: object, **kwargs: object) -> object:
        self._done: set[Node] = set()  # inputs already counted in this batch
        return super().run(*args, **kwargs)


def collect_hessians(
    gm: GraphModule, layers: Sequence[Node], batches: Iterable[tuple[Tensor, ...]]
) -> dict[Node, Tensor]:
    """``2 XᵀX / rows`` (``[K, K]``, float32) per layer, the mean over every input row seen."""
    recorder = _HessianRecorder(gm, layers)
    with torch.no_grad():
        for inputs in batches:
            recorder.run(*inputs)
    out = {}
    for layer, source in recorder.inputs.items():
        if source in recorder.sums:
            out[layer] = 2.0 * recorder.sums[source] / max(recorder.counts[source], 1)
    return out
