"""Output statistics of chosen layers on calibration data, for output-PCA.

One interpreted run of the graph per calibration batch; after each target node runs, its
output is folded into running float64 sums (``Σ y`` and ``Σ y yᵀ`` over every output vector:
each spatial position of a conv, each row of a linear), so memory does not grow with the
amount of data. Reading the output right after its node runs matters: the captured graph
applies in-place activations (``aten.relu_``) to conv outputs a node later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.fx import GraphModule, Interpreter, Node

from graphopt.data import input_batches  # re-exported: the PCA pass reads it from here

__all__ = ["OutputStats", "collect_output_stats", "input_batches"]


@dataclass(frozen=True)
class OutputStats:
    """Mean and covariance of a layer's output vectors, and how many vectors they came from."""

    mean: Tensor
    covariance: Tensor
    count: int


class _Recorder(Interpreter):
    def __init__(self, gm: GraphModule, targets: Mapping[Node, int]) -> None:
        super().__init__(gm)
        self.targets = {node: i for i, node in enumerate(targets)}
        self.channel_dims = list(targets.values())
        self.sums: list[Tensor | None] = [None] * len(targets)
        self.outer: list[Tensor | None] = [None] * len(targets)
        self.counts = [0] * len(targets)

    def run_node(self, n: Node) -> object:
        result = super().run_node(n)
        index = self.targets.get(n)
        if index is not None:
            vectors = _output_vectors(result, self.channel_dims[index])
            s, o = vectors.sum(0), vectors.T @ vectors
            self.sums[index] = s if self.sums[index] is None else self.sums[index] + s
            self.outer[index] = o if self.outer[index] is None else self.outer[index] + o
            self.counts[index] += vectors.shape[0]
        return result


def collect_output_stats(
    gm: GraphModule, targets: Mapping[Node, int], batches: Iterable[tuple[Tensor, ...]]
) -> dict[Node, OutputStats]:
    """Run ``gm`` on every batch; each target's output mean and covariance over its channels.

    ``targets`` maps a node to its output's channel dimension (1 for conv2d, -1 for linear).
    """
    recorder = _Recorder(gm, targets)
    with torch.no_grad():
        for inputs in batches:
            recorder.run(*inputs)
    stats = {}
    for node, i in recorder.targets.items():
        count = recorder.counts[i]
        if not count:
            continue
        mean = recorder.sums[i] / count
        covariance = recorder.outer[i] / count - torch.outer(mean, mean)
        stats[node] = OutputStats(mean, (covariance + covariance.T) / 2, count)
    return stats


def _output_vectors(output: Tensor, channel_dim: int) -> Tensor:
    """Channel vectors as rows: ``(N, C, H, W) → (N·H·W, C)``, ``(..., F) → (…, F)``."""
    y = output.detach().to(torch.float64).movedim(channel_dim, -1)
    return y.reshape(-1, y.shape[-1])
