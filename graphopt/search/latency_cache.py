"""Latency lookup: every channel configuration is measured at most once.

NetAdapt (Yang et al. 2018) estimates a network's latency from a lookup table of per-layer
latencies measured once per (layer, input channels, output channels). graphopt keeps the idea
at whole-model granularity: a *configuration* is the tuple of per-group channel counts, and
the cache maps it to the latency measured for it. Whole-model measurements include what a
per-layer table misses (fusions, layout changes, memory traffic between layers) at the price
of one measurement per configuration; the search meets configurations again (a group cut in
one iteration proposes in the next the same largest removal and probes it measured before, as
the other groups are unchanged) and finds them here instead of measuring again.

A group's channel count is given per layer whose output channels it holds (``out`` members):
a concat joined by a residual add (``cat(a, b) + c``) makes one group of several layers, and
the same total could be split between them differently. The key does not include weights:
latency depends on shapes only, so it stays valid when a short fine-tune changes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

from graphopt.pruning.groups import PruningGroup

__all__ = ["Configuration", "LatencyCache", "configuration"]

Configuration = tuple[tuple[str, tuple[int, ...]], ...]


def configuration(
    groups: Sequence[PruningGroup], removals: Mapping[str, Collection[int]] | None = None
) -> Configuration:
    """Per group, the output channels each of its layers keeps after ``removals``."""
    removals = removals or {}
    key = []
    for g in groups:
        gone = set(removals.get(g.id, ()))
        outs = [m for m in g.members if m.role == "out"] or list(g.members[:1])
        kept = tuple(sum(len(ix) for u, ix in enumerate(m.indices) if u not in gone) for m in outs)
        key.append((g.id, kept))
    return tuple(key)


class LatencyCache:
    """Memoises ``measure()`` by configuration; counts measurements and cache hits."""

    def __init__(self) -> None:
        self.entries: dict[Configuration, float] = {}
        self.measurements = 0
        self.hits = 0

    def __contains__(self, key: Configuration) -> bool:
        return key in self.entries

    def get(self, key: Configuration, measure: Callable[[], float]) -> float:
        """The latency of ``key``: cached, or ``measure()`` once (a positive finite number)."""
        if key in self.entries:
            self.hits += 1
            return self.entries[key]
        value = measure()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"a latency must be a number of seconds, got {value!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"a latency must be a positive finite number of seconds, got {value}")
        self.measurements += 1
        self.entries[key] = float(value)
        return float(value)
