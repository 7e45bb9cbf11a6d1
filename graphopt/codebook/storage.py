"""Stored bytes of codebook weights: b-bit indices, Huffman-coded indices, Deep Compression's
sparse coding; and of a whole model with its codebooks and sparse layers.

For a layer of ``n`` weights with ``K = 2^b`` centroids of ``v`` bytes (``K`` or ``C · K`` of
them):

- ``bits``: the indices packed at ``b`` bits, ``⌈n · b / 8⌉``, plus the codebook;
- ``huffman``: the indices Huffman-coded (``Σ_k n_k · ℓ_k`` bits for ``n_k`` weights of cluster
  ``k`` with code length ``ℓ_k``, rounded up to bytes), one byte per symbol for the code
  lengths of the canonical code, plus the codebook. Huffman spends at least one bit per
  symbol, so a 90%-zero layer stays above 1 bit a weight this way;
- ``sparse`` (a layer with a fixed zero entry, Deep Compression §3): only non-zero weights
  are stored, each as ``(run, cluster)`` — the run of zeros before it (the relative index),
  capped at ``2^8 − 1`` with a filler entry of cluster 0 for longer runs — and the runs and
  the clusters are Huffman-coded separately, each with its code-length table. At 90%
  sparsity and 15 equally likely non-zero clusters this is about 0.9 bits a weight (the
  test's measurement), less when k-means leaves the clusters unequal.

A layer is stored in the smallest of them. Huffman codes come from ``dahuffman`` (a
maintained pure-Python library; only its code table is used here, which gives the exact
length of what its ``encode`` writes; ``tests/passes/test_cluster.py`` checks that).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from graphopt.codebook.form import codebook_tensors, entries
from graphopt.sparsity.masks import graph_masks
from graphopt.sparsity.storage import sparse_bytes, tensor_bytes

__all__ = ["RUN_BITS", "CodeBytes", "code_bytes", "huffman_bits", "model_storage"]

RUN_BITS = 8  # relative indices up to 255, as Deep Compression's conv layers


@dataclass(frozen=True)
class CodeBytes:
    """One layer's bytes in each encoding; ``sparse`` is None without a zero entry."""

    dense: int
    bits: int
    huffman: int
    sparse: int | None

    @property
    def best(self) -> tuple[str, int]:
        options = [("bits", self.bits), ("huffman", self.huffman)]
        if self.sparse is not None:
            options.append(("sparse_huffman", self.sparse))
        return min(options, key=lambda item: item[1])


def huffman_bits(counts: Mapping[int, int]) -> int:
    """Bits of the Huffman coding of symbols with these counts.

    ``dahuffman``'s ``encode`` writes ``⌈bits / 8⌉`` bytes: its end-of-data code only fills the
    last byte, so it costs nothing beyond the rounding.
    """
    from dahuffman import HuffmanCodec

    used = {int(s): int(c) for s, c in counts.items() if c > 0}
    if not used:
        return 0
    table = HuffmanCodec.from_frequencies(used).get_code_table()
    return sum(count * table[symbol][0] for symbol, count in used.items())


def code_bytes(index: Tensor, centroids: Tensor, bits: int, zero: bool) -> CodeBytes:
    """The sizes of one codebook layer (``index`` into ``centroids``)."""
    flat = index.reshape(-1).numpy().astype(np.int64)
    n, k = flat.size, 2**bits
    book = centroids.numel() * centroids.element_size()
    counts = dict(enumerate(np.bincount(flat, minlength=k).tolist()))
    huffman = math.ceil(huffman_bits(counts) / 8) + k + book
    sparse = _sparse_coding(flat, k) + book if zero else None
    return CodeBytes(
        dense=n * centroids.element_size(),
        bits=math.ceil(n * bits / 8) + book,
        huffman=huffman,
        sparse=sparse,
    )


def _sparse_coding(flat: np.ndarray, k: int) -> int:
    """Bytes of the ``(run, cluster)`` entries of the non-zero weights, Huffman-coded."""
    cap = 2**RUN_BITS - 1
    positions = np.flatnonzero(flat)
    runs = np.diff(np.concatenate([[-1], positions])) - 1
    fillers = runs // (cap + 1)  # each filler entry covers cap zeros and one explicit zero
    run_counts = np.bincount(runs % (cap + 1), minlength=cap + 1)
    run_counts[cap] += int(fillers.sum())
    cluster_counts = np.bincount(flat[positions], minlength=k)
    cluster_counts[0] += int(fillers.sum())
    payload = huffman_bits(dict(enumerate(run_counts.tolist())))
    payload += huffman_bits(dict(enumerate(cluster_counts.tolist())))
    return math.ceil(payload / 8) + (cap + 1) + k


def model_storage(gm: nn.Module) -> dict[str, Any]:
    """The model's bytes: ``dense`` (every weight float), ``bits`` and ``huffman`` (codebook
    layers so coded), ``stored`` (codebook layers in their smallest coding); sparsified layers
    without a codebook count in their smallest sparse encoding in the last three, every other
    tensor dense. A stale codebook (``codebook_tensors``) counts as its current tensors.
    """
    sizes = tensor_bytes(gm)
    tensors: dict[str, Tensor] = dict(gm.named_parameters())
    coded: dict[tuple[str, ...], CodeBytes] = {}
    rows: list[dict[str, Any]] = []
    for target, entry in entries(gm).items():
        found = codebook_tensors(gm, target)
        if found is None:
            continue
        centroids, index = found
        size = code_bytes(index, centroids, entry["bits"], bool(entry["zero"]))
        gather = entry["form"] == "gather"
        coded[(entry["codebook"], entry["index"]) if gather else (target,)] = size
        encoding, best = size.best
        rows.append(
            {
                "weight": target,
                "form": entry["form"],
                "params": index.numel(),
                "clusters": len(np.unique(index.numpy())),
                "bits": entry["bits"],
                "bytes_dense": size.dense,
                "bytes_bits": size.bits,
                "bytes_huffman": size.huffman,
                "bytes_sparse": size.sparse,
                "encoding": encoding,
                "bytes_stored": best,
            }
        )
    covered = {name for names in coded for name in names}
    sparse = {
        target: sparse_bytes(tensors[target].detach()).best[1]
        for target, keep in graph_masks(gm).items()
        if target not in covered
        and target in tensors
        and tuple(tensors[target].shape) == tuple(keep.shape)
    }
    rest = sum(size for name, size in sizes.items() if name not in covered)
    base = rest - sum(sizes[name] for name in sparse) + sum(sparse.values())
    return {
        "bytes_dense": rest + sum(c.dense for c in coded.values()),
        "bytes_bits": base + sum(c.bits for c in coded.values()),
        "bytes_huffman": base + sum(c.huffman for c in coded.values()),
        "bytes_stored": base + sum(c.best[1] for c in coded.values()),
        "layers": rows,
    }
