"""Calibration observers: they watch a tensor over calibration batches and choose its range.

An observer sees every value a tensor takes on the calibration data and returns the clipping
range ``[lo, hi]`` that the quantization parameters are computed from (``qparams.py``).

- ``minmax``: the extremes seen. Exact coverage, but one outlier widens every step.
- ``moving_average``: the extremes of each batch averaged with momentum (as in QAT
  observers), so a single batch's outlier counts for a fraction.
- ``percentile``: the ``percentile``-th and ``(100 − percentile)``-th percentiles of all values
  (from the histogram), clipping the rare tails.
- ``mse``: the range that minimises the expected squared quantization error (rounding inside,
  clipping outside) over the histogram; each end is shrunk on a grid of fractions of the
  data's, the upper end first.
- ``entropy``: the same search minimising KL(P‖Q) between the histogram P and its image Q
  after quantization to the 2ᵇ levels (TensorRT's calibration criterion, on both tails).

Histograms have ``bins`` bins over the running [min, max]; when a batch widens the range the
old counts are re-binned onto the new edges (mass at old bin centres), so memory is constant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
from torch import Tensor

__all__ = ["OBSERVERS", "Observer", "make_observer"]


class Observer(ABC):
    """Watches one tensor; ``range()`` is the clipping range to quantize it with."""

    @abstractmethod
    def update(self, value: Tensor, bounds: tuple[float, float] | None = None) -> None:
        """Observe ``value``; ``bounds`` is its (min, max) when the caller computed it."""

    @abstractmethod
    def range(self, levels: int) -> tuple[float, float]:
        """``[lo, hi]`` for a quantizer with ``levels`` steps (256 for 8 bits)."""

    @property
    @abstractmethod
    def seen(self) -> bool: ...


def _bounds(value: Tensor) -> tuple[float, float]:
    lo, hi = torch.aminmax(value.detach().float())
    return lo.item(), hi.item()


class MinMaxObserver(Observer):
    def __init__(self) -> None:
        self.lo, self.hi = float("inf"), float("-inf")

    def update(self, value: Tensor, bounds: tuple[float, float] | None = None) -> None:
        lo, hi = bounds or _bounds(value)
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    def range(self, levels: int) -> tuple[float, float]:
        return self.lo, self.hi

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi


class MovingAverageObserver(Observer):
    def __init__(self, momentum: float = 0.1) -> None:
        self.momentum = momentum
        self.lo, self.hi = 0.0, 0.0
        self._seen = False

    def update(self, value: Tensor, bounds: tuple[float, float] | None = None) -> None:
        lo, hi = bounds or _bounds(value)
        if not self._seen:
            self.lo, self.hi, self._seen = lo, hi, True
        else:
            self.lo += self.momentum * (lo - self.lo)
            self.hi += self.momentum * (hi - self.hi)

    def range(self, levels: int) -> tuple[float, float]:
        return self.lo, self.hi

    @property
    def seen(self) -> bool:
        return self._seen


class HistogramObserver(Observer, ABC):
    """Keeps a fixed-size histogram over the running range; subclasses choose from it."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.counts = np.zeros(bins)
        self.lo, self.hi = 0.0, 0.0
        self._seen = False

    @property
    def seen(self) -> bool:
        return self._seen

    def update(self, value: Tensor, bounds: tuple[float, float] | None = None) -> None:
        data = value.detach().float().flatten()
        if not data.numel():
            return
        lo, hi = bounds or _bounds(data)
        if not self._seen:
            self.lo, self.hi = lo, max(hi, lo + 1e-12)
            self._seen = True
        elif lo < self.lo or hi > self.hi:
            self._rebin(min(lo, self.lo), max(hi, self.hi))
        counts = torch.histc(data, bins=self.bins, min=self.lo, max=self.hi)
        self.counts += counts.double().numpy()

    def _rebin(self, lo: float, hi: float) -> None:
        centres = self.centres()
        edges = np.linspace(lo, hi, self.bins + 1)
        self.counts, _ = np.histogram(centres, bins=edges, weights=self.counts)
        self.lo, self.hi = lo, hi

    def centres(self) -> np.ndarray:
        width = (self.hi - self.lo) / self.bins
        return self.lo + width * (np.arange(self.bins) + 0.5)


class PercentileObserver(HistogramObserver):
    def __init__(self, percentile: float = 99.99, bins: int = 2048) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def range(self, levels: int) -> tuple[float, float]:
        cdf = np.cumsum(self.counts) / max(self.counts.sum(), 1.0)
        edges = np.linspace(self.lo, self.hi, self.bins + 1)
        tail = (100.0 - self.percentile) / 100.0
        lo_bin = int(np.searchsorted(cdf, tail, side="left"))
        hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
        lo = self.lo if self.lo >= 0 else float(edges[min(lo_bin, self.bins - 1)])
        return lo, float(edges[min(hi_bin + 1, self.bins)])


class _SearchObserver(HistogramObserver, ABC):
    """Shrinks each end of ``[lo, hi]`` on a grid and keeps the ends that minimise ``loss``:
    first the upper end (lower end fixed at the data's), then the lower end."""

    def __init__(self, bins: int = 2048, grid: int = 100) -> None:
        super().__init__(bins)
        self.grid = grid

    def range(self, levels: int) -> tuple[float, float]:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        alphas = np.linspace(1.0, 0.02, self.grid)
        hi = self._best([(lo, hi * a) for a in alphas], levels)[1]
        return self._best([(lo * a, hi) for a in alphas], levels)

    def _best(self, candidates: list[tuple[float, float]], levels: int) -> tuple[float, float]:
        losses = [self.loss(c, levels) for c in candidates]
        return candidates[int(np.argmin(losses))]

    def _quantized(self, clip: tuple[float, float], levels: int) -> tuple[np.ndarray, float]:
        """Where each histogram bin's centre lands after quantizing with range ``clip``."""
        lo, hi = clip
        scale = max((hi - lo) / (levels - 1), 1e-12)
        zero = np.round(-lo / scale)
        steps = np.clip(np.round(self.centres() / scale) + zero, 0, levels - 1)
        return (steps - zero) * scale, scale

    @abstractmethod
    def loss(self, clip: tuple[float, float], levels: int) -> float: ...


class MSEObserver(_SearchObserver):
    def loss(self, clip: tuple[float, float], levels: int) -> float:
        dequantized, _ = self._quantized(clip, levels)
        return float(np.sum(self.counts * (self.centres() - dequantized) ** 2))


class EntropyObserver(_SearchObserver):
    def loss(self, clip: tuple[float, float], levels: int) -> float:
        """KL(P‖Q) as TensorRT's calibrator defines it, on both tails.

        P: the histogram inside the range with the clipped mass added to the edge bins. Q: the
        unclipped histogram inside the range merged into the quantizer's levels, each level's
        mass spread evenly over its non-empty bins. Clipping piles mass on P's edge bins that
        Q does not have; too wide a range merges unlike bins into one level.
        """
        centres = self.centres()
        inside = (centres >= clip[0]) & (centres <= clip[1])
        if inside.sum() < 2:
            return float("inf")
        counts = self.counts[inside]
        p = counts.copy()
        p[0] += self.counts[centres < clip[0]].sum()
        p[-1] += self.counts[centres > clip[1]].sum()
        scale = max((clip[1] - clip[0]) / (levels - 1), 1e-12)
        level = np.round((centres[inside] - clip[0]) / scale).astype(np.int64)
        # Zero is exactly representable: the bin holding it (ReLU's spike of exact zeros) is
        # its own level, or its mass would be smeared over every bin that shares the level.
        zero = np.zeros_like(counts, dtype=bool)
        if clip[0] <= 0.0 <= clip[1]:
            edges = self.lo + (self.hi - self.lo) / self.bins * np.arange(self.bins + 1)
            zero_bin = int(np.clip(np.searchsorted(edges, 0.0, side="right") - 1, 0, self.bins - 1))
            position = zero_bin - int(np.argmax(inside))
            if 0 <= position < len(counts):
                zero[position] = True
        smeared = np.where(zero, 0.0, counts)
        mass = np.bincount(level, weights=smeared)
        occupied = np.bincount(level, weights=(smeared > 0).astype(float))
        q = np.where(smeared > 0, mass[level] / np.maximum(occupied[level], 1.0), 0.0)
        q = np.where(zero, counts, q)
        p, q = p / max(p.sum(), 1e-12), q / max(q.sum(), 1e-12)
        mask = p > 0
        return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-9))))


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, *, percentile: float = 99.99) -> Observer:
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose one of {sorted(OBSERVERS)}")
    if name == "percentile":
        return PercentileObserver(percentile)
    return OBSERVERS[name]()
