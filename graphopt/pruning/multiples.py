"""The channel multiple a backend runs fast, measured: ``prune: {round_to: auto}``.

Why measure it: a backend's conv kernels are blocked over channels, and a count off the block
runs on a slower path. ONNX Runtime's NCHWc kernels use blocks of 16 floats with AVX-512 and
8 with AVX2, so the right ``round_to`` depends on the machine the model will run on, and a
fixed 16 is wrong on half of them. Measured here (ORT 1.32, AVX-512, 1 thread, a 3×3 conv at
28×28 with c in and c out channels): 48 channels ran in 303 µs where 47 took 401 µs and 49
took 530 µs; 64 ran in 594 µs and 63 in 652 µs.

How: one probe layer (a 3×3, stride-1 conv on a 28×28 map, ``c`` channels in and out: the
middle of a ResNet stage) is timed at every count in ``PROBE_COUNTS`` through the backend's
cached per-layer latency (``PassContext.layer_latency``), and each count's cost per MAC
(``seconds / c²``) is computed. A candidate block ``b`` is compared with its half: its
*gain* is the median cost per MAC of the counts that are multiples of ``b/2`` but not of
``b`` over the median cost of the multiples of ``b``. With a true block of 16, the 16-gain is
large (24, 40, 56 … run the slow path, 32, 48, 64 … the fast one) and the 32-gain is about 1
(48 is as fast per MAC as 64), so the fast multiple is the largest candidate whose gain is at
least ``MIN_GAIN``; none: 1 (rounding would only throw channels away). Comparing with the
half block, not with all other counts, is what tells 16 from 32: against all counts both
look alike. Medians make one wrong timing harmless (tested with an outlier and noise).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from graphopt.pruning.latency import LayerLatency, LayerSpec

__all__ = ["CANDIDATES", "PROBE_COUNTS", "FastMultiple", "fast_multiple", "probe_specs"]

PROBE_COUNTS = tuple(range(17, 129))  # seven 16-blocks: every candidate, ≥ 3 of each kind
CANDIDATES = (2, 4, 8, 16, 32)
MIN_GAIN = 1.1  # the half block's counts must cost ≥ 10 % more per MAC for a block to count


@dataclass(frozen=True)
class FastMultiple:
    """The measured multiple and each candidate's gain (for the pass's stats)."""

    multiple: int
    gains: dict[int, float]

    def to_dict(self) -> dict[str, object]:
        return {"multiple": self.multiple, "gains": {str(k): v for k, v in self.gains.items()}}


def probe_specs(counts: tuple[int, ...] = PROBE_COUNTS) -> list[LayerSpec]:
    """The probe conv at each channel count (batch 1, 3×3, stride 1, padding 1, 28×28)."""
    return [
        LayerSpec("conv", (1, c, 28, 28), c, (3, 3), (1, 1), (1, 1), (1, 1), 1, True)
        for c in counts
    ]


def fast_multiple(measure: LayerLatency, counts: tuple[int, ...] = PROBE_COUNTS) -> FastMultiple:
    """The channel multiple ``measure``'s backend runs fast (1: none measurably)."""
    seconds = list(measure(probe_specs(counts)))
    per_mac = {c: s / (c * c) for c, s in zip(counts, seconds, strict=True)}
    gains = {}
    for block in CANDIDATES:
        on = [v for c, v in per_mac.items() if c % block == 0]
        half = [v for c, v in per_mac.items() if c % (block // 2) == 0 and c % block]
        gains[block] = round(statistics.median(half) / statistics.median(on), 4)
    fast = [block for block, gain in gains.items() if gain >= MIN_GAIN]
    return FastMultiple(max(fast, default=1), gains)
