"""Codebooks by k-means: each weight replaced by the nearest of ``2^b`` shared values.

Han et al. (Deep Compression, 2016) cluster each layer's weights with 1-D k-means, minimising
``Σ_i |w_i − c_{k(i)}|²``; here per layer or per output channel (``per_channel``: one codebook
per row, ``C · 2^b`` values). Initialisation, as in the paper:

- ``linear``: ``2^b`` points evenly spaced over ``[min w, max w]`` — the paper's best, since
  it keeps centroids at the rare large weights that matter most;
- ``density``: the quantiles ``(k + ½)/2^b`` of the weights (evenly spaced on the CDF), which
  concentrates centroids where weights are dense.

Zero stays its own cluster when the weights hold exact zeros (a sparsified layer): entry 0 is
``0`` and only the non-zero weights are clustered into the other ``2^b − 1``, so pruned weights
stay pruned and the index of a zero is the one the sparse coding counts on. When a row has no
more distinct (non-zero) values than free entries, the codebook is those values and the
lookup reproduces the weights bit for bit (``exact``); no k-means runs.

k-means is scikit-learn's ``KMeans`` (Lloyd, the explicit initialisation above, one run),
inside ``threadpool_limits(1)``: on this project's shared 2-core machine its default OpenMP
threads made one 590 000-weight layer take 5.1 s and 256 per-channel fits of 2 304 weights
65 s; one thread took 1.7 s and 2.0 s (measured, 16 clusters).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["INITS", "CodebookFit", "fit_codebook"]

INITS = ("linear", "density")


@dataclass(frozen=True)
class CodebookFit:
    """``index`` (uint8, the weight's shape) into ``centroids`` (``(K,)`` or ``(C, K)``)."""

    index: Tensor
    centroids: Tensor
    zero: bool
    exact: bool


def fit_codebook(
    weight: Tensor,
    bits: int,
    *,
    per_channel: bool = False,
    init: Literal["linear", "density"] = "linear",
    zero: bool | None = None,
) -> CodebookFit:
    """Cluster ``weight`` into ``2^bits`` centroids (entry 0 fixed at zero when ``zero``).

    ``zero=None`` reserves the zero entry exactly when the weight holds an exact zero.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8] (uint8 indices), got {bits}")
    values = weight.detach().to(torch.float64).cpu().numpy()
    zero = bool((values == 0).any()) if zero is None else zero
    rows = values.reshape(values.shape[0], -1) if per_channel else values.reshape(1, -1)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on rows with few distinct values
        fits = [_fit_row(row, 2**bits, init, zero) for row in rows]
    index = np.stack([f[0] for f in fits]).reshape(values.shape)
    centroids = np.stack([f[1] for f in fits])
    return CodebookFit(
        index=torch.from_numpy(index.astype(np.uint8)),
        centroids=torch.from_numpy(centroids if per_channel else centroids[0]).to(weight.dtype),
        zero=zero,
        exact=all(f[2] for f in fits),
    )


def _fit_row(row: np.ndarray, k: int, init: str, zero: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(index, centroids, exact)`` of one row; centroids sorted, zero first when reserved."""
    offset = 1 if zero else 0
    live = row != 0 if zero else np.ones(row.shape, dtype=bool)
    free = k - offset
    index = np.zeros(row.shape, dtype=np.int64)
    centroids = np.zeros(k, dtype=np.float64)
    points = row[live]
    distinct = np.unique(points.astype(np.float32))  # float32: the values the layer holds
    if len(distinct) <= free:
        centroids[offset : offset + len(distinct)] = distinct
        index[live] = offset + np.searchsorted(distinct, points.astype(np.float32))
        return index, centroids, True
    from sklearn.cluster import KMeans

    start = _init(points, free, init)
    km = KMeans(n_clusters=free, init=start[:, None], n_init=1, max_iter=300, random_state=0)
    labels = km.fit(points[:, None]).labels_
    found = km.cluster_centers_[:, 0]
    order = np.argsort(found, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(free)
    centroids[offset:] = found[order]
    index[live] = offset + rank[labels]
    return index, centroids, False


def _init(points: np.ndarray, k: int, init: str) -> np.ndarray:
    if init == "linear":
        return np.linspace(points.min(), points.max(), k)
    if init == "density":
        return np.quantile(points, (np.arange(k) + 0.5) / k)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")
