"""Bytes of a sparse weight in the encodings a deployment would store, and of a whole model.

Dense kernels (ONNX Runtime's and TVM's CPU conv/GEMM) multiply the zeros like any value, so
a sparse model stored dense is exactly as large and as fast as the dense one. What sparsity
buys is storage (and transfer) in a sparse encoding:

- ``dense``: ``n · v`` bytes (``v`` the value's size, 4 for float32);
- ``bitmask``: one bit per weight saying whether it is kept, then the kept values:
  ``⌈n/8⌉ + k · v``;
- ``csr``: the weight as a matrix ``(out, rest)`` in compressed sparse rows: ``out + 1`` row
  pointers and one column index per kept value, each in the narrowest unsigned integer that
  holds it (uint8 ≤ 255, uint16 ≤ 65 535, else uint32), then the values:
  ``(out + 1) · w_ptr + k · (w_col + v)``.

A layer is stored in the smallest of the three (at 80% sparsity of a float32 conv: bitmask,
``0.125 + 0.2 · 4 = 0.925`` bytes a weight against 4). ``model_bytes`` adds every other
tensor of the model dense, as the deployed file holds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["SparseBytes", "model_bytes", "sparse_bytes", "tensor_bytes", "uint_bytes"]


@dataclass(frozen=True)
class SparseBytes:
    """One tensor's size in each encoding, and the one it is stored in."""

    dense: int
    bitmask: int
    csr: int

    @property
    def best(self) -> tuple[str, int]:
        options = (("dense", self.dense), ("bitmask", self.bitmask), ("csr", self.csr))
        return min(options, key=lambda item: item[1])


def uint_bytes(largest: int) -> int:
    """Bytes of the narrowest unsigned integer holding ``largest``."""
    return 1 if largest <= 0xFF else 2 if largest <= 0xFFFF else 4


def sparse_bytes(tensor: Tensor) -> SparseBytes:
    """The sizes of ``tensor`` (zeros pruned) as dense, bitmask and CSR."""
    n, value = tensor.numel(), tensor.element_size()
    kept = int((tensor != 0).sum())
    rows = tensor.shape[0] if tensor.dim() >= 1 else 1
    cols = n // max(rows, 1)
    csr = (rows + 1) * uint_bytes(kept) + kept * (uint_bytes(max(cols - 1, 0)) + value)
    return SparseBytes(dense=n * value, bitmask=math.ceil(n / 8) + kept * value, csr=csr)


def tensor_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of every parameter and buffer by name, as stored dense."""
    tensors: dict[str, Tensor] = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {name: t.numel() * t.element_size() for name, t in tensors.items()}


def model_bytes(model: nn.Module, encoded: Mapping[str, int]) -> int:
    """The model's stored bytes: ``encoded`` sizes for those tensors, the rest dense.

    ``encoded`` may name tensors that are not the model's own (a codebook kept beside the
    graph): they are added.
    """
    dense = tensor_bytes(model)
    return sum(size for name, size in dense.items() if name not in encoded) + sum(encoded.values())
