"""Pruning policy: how many units of each group to remove, and which ones.

Which: always the lowest-scored prunable units of a group (frozen units never go).

How many, per group of ``n`` units:

- **ratio** ``r``: remove ``floor(r · n)`` units, then fewer if needed so that every layer
  of the group keeps a multiple of ``round_to`` output channels, and at least
  ``min_channels`` (a unit can span several channels: a head, a conv group). Iterative
  pruning asks for a count per group instead (``select_by_count``): step ``i`` removes what
  brings the group to ``floor(rᵢ · n₀)`` removed units of its original ``n₀``, so the last
  step ends where one-shot pruning with ``r`` does (exactly, for equally wide units).
- **target MACs** ``t`` (fraction to keep): a global greedy search. Each group offers its next
  *step*: the fewest further lowest-scored units whose removal leaves a valid count (multiple
  of ``round_to``, ≥ ``min_channels``, ≥ 1 unit). Each group's scores are divided by the
  group's mean, so groups compare on one scale, and the cheapest step is taken until the MACs
  are at or below ``t`` × the original. A step that would land more than ``tolerance`` (1 %
  of the original) below the target is put aside and the search goes on with the others; only
  when no other step is left does the one landing closest to the target go. So a plan ends
  within the tolerance of its target wherever the steps left allow it, instead of one step
  below: a residual stream's step of 16 channels is 12 % of a small transformer's MACs, and
  the zoo transformer's ``latency_aware`` plan landed at 43.8 % of the MACs for a 50 % target
  before this rule (``benchmarks/RESULTS.md``), not an equal-MACs comparison. What
  "cheapest" means is the ``selection``:

  - ``importance``: the lowest mean normalised score of the step's units. Every group's
    average unit weighs 1, whatever it costs to compute, so a channel of a 7×7 layer goes as
    readily as one of a 112×112 layer.
  - ``cost_aware``: the lowest importance lost per MAC saved, ``Σ scores / ΔMACs`` — the
    ratio NetAdapt reasons with and that a global threshold over MAC-normalised scores
    amounts to: channels that are cheap to lose and expensive to compute go first (early,
    high-resolution layers; groups that shrink several big layers at once). ``ΔMACs`` of a
    step depends on what was already removed (a consumer conv whose own outputs were pruned
    saves less per input channel), and it only ever shrinks as other groups are pruned, so
    ratios only grow: the search re-evaluates a popped step and takes it when it is still
    the cheapest (lazy greedy, exact for keys that only grow). A step that saves no MACs is
    never taken. When scores differ little within groups (untrained weights), MACs per
    channel decide alone and the groups many convs share (residual streams, bottlenecks) go
    down to ``round_to`` first: fewer MACs, but measured slower on ONNX Runtime than
    ``importance`` at equal MACs (``benchmarks/RESULTS.md``).
  - ``latency_aware``: the lowest importance lost per second of predicted latency saved, on
    a latency cost model (``graphopt.pruning.latency``: per-layer tables measured on the
    backend), while the search still stops at ``t`` × the original MACs. At equal MACs this
    takes the channels whose removal the backend turns into time: a memory-bound depthwise
    conv, a layer at full resolution, a count that drops to a faster kernel block. The same
    lazy greedy as ``cost_aware``; a step whose predicted saving is not positive (a table
    plateau) ranks after every step that saves time, so the MACs target stays reachable.

MACs are predicted without rewriting the graph: a conv or linear costs
``macs₀ · (kept out / out) · (kept in / in)``, a grouped conv ``macs₀ · kept out / out`` (its
per-group inputs don't change), attention ``macs₀ · kept heads / heads``; other ops' MACs do
not depend on pruned channels. This is exactly what ``graphopt.analysis.analyze`` counts on
the pruned graph.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from graphopt.analysis import analyze
from graphopt.pruning.groups import PruningGroup

__all__ = [
    "LATENCY_AWARE",
    "SELECTIONS",
    "CostModel",
    "removal_order",
    "schedule",
    "select_by_count",
    "select_by_ratio",
    "select_for_macs",
    "valid_removals",
]

_SCALING_ROLES = ("out", "in", "heads")
SELECTIONS = ("importance", "cost_aware", "latency_aware")
LATENCY_AWARE = "latency_aware"


class CostModel:
    """Predicts the MACs of ``gm`` after removing units, incrementally."""

    def __init__(self, gm: GraphModule, groups: Sequence[PruningGroup]) -> None:
        stats = analyze(gm)
        self.params = stats.params
        self.base = {s.name: s.macs for s in stats.nodes if s.macs}
        self.size: dict[tuple[str, str], int] = {}
        self.touch: dict[str, list[tuple[tuple[str, str], list[int]]]] = {}
        for g in groups:
            entries = []
            for m in g.members:
                if m.role in _SCALING_ROLES and m.node in self.base:
                    self.size[(m.node, m.role)] = m.size
                    entries.append(((m.node, m.role), [len(ix) for ix in m.indices]))
            self.touch[g.id] = entries
        self.removed = dict.fromkeys(self.size, 0)
        self.node_macs = dict(self.base)
        self.total = sum(self.base.values()) + 0.0
        self.original = self.total

    def copy(self) -> CostModel:
        """An independent copy: predict a removal without changing this model."""
        twin = copy.copy(self)
        twin.removed = dict(self.removed)
        twin.node_macs = dict(self.node_macs)
        return twin

    def remove(self, group_id: str, units: Sequence[int]) -> None:
        """Account for removing ``units`` of a group (each at most once)."""
        extra = self._positions(group_id, units)
        for key, count in extra.items():
            self.removed[key] += count
        for node in {key[0] for key in extra}:
            macs = self._macs(node, {})
            self.total += macs - self.node_macs[node]
            self.node_macs[node] = macs

    def saving(self, group_id: str, units: Sequence[int]) -> float:
        """The MACs that removing ``units`` of a group would save now (nothing changes)."""
        extra = self._positions(group_id, units)
        return sum(self.node_macs[n] - self._macs(n, extra) for n in {key[0] for key in extra})

    def macs_saving(self, group_id: str, units: Sequence[int]) -> float:
        """The MACs that removing ``units`` would save now: ``saving``, whose unit is MACs
        here (a latency model's ``saving`` is seconds and overrides this)."""
        return self.saving(group_id, units)

    def _positions(self, group_id: str, units: Sequence[int]) -> dict[tuple[str, str], int]:
        """(node, role) → positions the units own there."""
        extra: dict[tuple[str, str], int] = {}
        for key, counts in self.touch.get(group_id, ()):
            extra[key] = extra.get(key, 0) + sum(counts[u] for u in units)
        return extra

    def _macs(self, node: str, extra: Mapping[tuple[str, str], int]) -> float:
        return self._scaled(float(self.base[node]), node, extra)

    def _scaled(self, value: float, node: str, extra: Mapping[tuple[str, str], int]) -> float:
        """``value`` (the node's MACs) times each kept share, in the roles' order."""
        for share in self._kept(node, extra).values():
            value *= share
        return value

    def _kept(self, node: str, extra: Mapping[tuple[str, str], int]) -> dict[str, float]:
        """Role → the share of the node's channels (heads) kept, with ``extra`` removed too."""
        return {
            role: 1.0 - (self.removed[key] + extra.get(key, 0)) / self.size[key]
            for role in _SCALING_ROLES
            if (key := (node, role)) in self.size
        }


def valid_removals(group: PruningGroup, order: Sequence[int], round_to: int, min_channels: int):
    """Removal counts ``r`` (of ``order``'s first units) that leave a valid group, ascending.

    Valid: at least one unit stays, and every layer of the group whose output channels it
    holds keeps a multiple of ``round_to`` channels, and at least ``min_channels``.
    """
    outs = [m for m in group.members if m.role == "out"] or list(group.members[:1])
    if not order:
        return [0]
    # kept channels per layer (row) after removing the first r units (column r - 1)
    widths = torch.tensor([[len(m.indices[u]) for u in order] for m in outs], dtype=torch.long)
    kept = widths.new_tensor([sum(len(ix) for ix in m.indices) for m in outs])[:, None]
    kept = kept - widths.cumsum(1)
    ok = ((kept >= min_channels) & (kept % round_to == 0)).all(0)
    ok[group.num_units - 1 :] = False  # at least one unit stays
    return [0, *(ok.nonzero().flatten() + 1).tolist()]


def removal_order(group: PruningGroup, scores: torch.Tensor) -> list[int]:
    """The prunable units of ``group``, lowest-scored first (ties: lower unit number)."""
    values = scores.tolist()
    return sorted(group.prunable_units, key=lambda u: (values[u], u))


def schedule(step: int, steps: int, power: float) -> float:
    """The share of the final pruning done after ``step`` of ``steps``: ``1 − (1 − i/k)^p``.

    The polynomial schedule of Zhu & Gupta (2017, "To prune, or not to prune"), who use
    ``p = 3``: large steps first, while the network is most redundant, then smaller ones.
    ``p = 1`` is linear; the last step always reaches 1 (the full target).
    """
    return 1.0 - (1.0 - step / steps) ** power


def select_by_ratio(
    groups: Sequence[PruningGroup],
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Per group, the ``floor(ratio · n)`` lowest-scored units (fewer to keep counts valid)."""
    counts = {g.id: math.floor(ratio * g.num_units + 1e-9) for g in groups}
    return select_by_count(groups, scores, counts, round_to=round_to, min_channels=min_channels)


def select_by_count(
    groups: Sequence[PruningGroup],
    scores: Mapping[str, torch.Tensor],
    counts: Mapping[str, int],
    *,
    round_to: int = 1,
    min_channels: int = 1,
) -> dict[str, tuple[int, ...]]:
    """Per group, its ``counts[id]`` lowest-scored units (fewer to keep counts valid)."""
    plan = {}
    for g in groups:
        order = removal_order(g, scores[g.id])
        wanted = counts.get(g.id, 0)
        r = max(v for v in valid_removals(g, order, round_to, min_channels) if v <= wanted)
        if r:
            plan[g.id] = tuple(sorted(order[:r]))
    return plan


def select_for_macs(
    groups: Sequence[PruningGroup],
    scores: Mapping[str, torch.Tensor],
    cost: CostModel,
    target: float,
    *,
    round_to: int = 1,
    min_channels: int = 1,
    selection: str = "importance",
    tolerance: float | None = 0.01,
) -> tuple[dict[str, tuple[int, ...]], bool]:
    """Greedy global removal until the cost ≤ ``target`` × original; (plan, target reached).

    ``selection`` ranks the steps (see the module docstring): ``importance`` by the mean
    normalised score of their units, ``cost_aware`` by normalised importance lost per unit of
    cost saved, ``latency_aware`` by importance lost per second saved on a latency ``cost``
    (one with ``predicted_macs``) and ``target`` a share of the MACs. A step landing more than
    ``tolerance`` × the original below the goal waits until no other step is left (``None``:
    plain greedy, the last step may overshoot by all it removes). ``cost`` is left predicting
    the cost after the plan.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    by_macs = selection == LATENCY_AWARE
    if by_macs and not hasattr(cost, "predicted_macs"):
        raise ValueError("selection latency_aware needs a latency cost model (LatencyCostModel)")
    aware = selection in ("cost_aware", LATENCY_AWARE)
    goal = target * (cost.original_macs if by_macs else cost.original)

    def remaining() -> float:
        return cost.predicted_macs() if by_macs else cost.total

    def landing(s: _Search) -> float:
        """Where the target's measure would be after ``s``'s next step."""
        units = s.next_units()
        saved = cost.macs_saving(s.gid, units) if by_macs else cost.saving(s.gid, units)
        return remaining() - saved

    scale = cost.original_macs if by_macs else cost.original
    floor = -math.inf if tolerance is None else goal - tolerance * scale

    search = {
        g.id: _Search.of(g, scores[g.id], k, round_to, min_channels) for k, g in enumerate(groups)
    }

    def key(s: _Search) -> float | None:
        if not s.has_next():
            return None
        lost = s.next_scores()
        if not aware:
            return sum(lost) / len(lost)
        saved = cost.saving(s.gid, s.next_units())
        if saved > 0:
            return sum(lost) / saved
        return math.inf if by_macs else None  # a plateau of the tables: last, not never

    heap = [(k, s.rank, s.gid) for s in search.values() if (k := key(s)) is not None]
    heapq.heapify(heap)
    aside: list[_Search] = []  # steps that would land more than the tolerance below the goal
    while remaining() > goal:
        if heap:
            _, rank, gid = heapq.heappop(heap)
            s = search[gid]
            if aware:  # other groups' steps may have shrunk its saving since it was pushed
                fresh = key(s)
                if fresh is None:
                    continue
                if heap and (fresh, rank, gid) > heap[0]:
                    heapq.heappush(heap, (fresh, rank, gid))
                    continue
            if landing(s) < floor:  # it only lands lower as other steps go: aside for good
                aside.append(s)
                continue
        elif aside:  # only steps that overshoot are left: the one landing closest goes
            s = _closest(aside, landing, goal)
            aside.remove(s)
        else:
            break
        cost.remove(s.gid, s.next_units())
        s.done += 1
        if (k := key(s)) is not None:
            heapq.heappush(heap, (k, s.rank, s.gid))
    plan = {gid: s.removed() for gid, s in search.items() if s.done}
    return plan, remaining() <= goal


def _closest(aside: Sequence[_Search], landing: Callable[[_Search], float], goal: float) -> _Search:
    """Of the steps put aside, the one that reaches ``goal`` landing highest; if none reaches
    it any more (other removals shrank their savings), the one that saves most."""
    reaching = [s for s in aside if landing(s) <= goal]
    if reaching:
        return max(reaching, key=landing)
    return min(aside, key=landing)


@dataclass
class _Search:
    """One group's state in the greedy search: removal order, valid counts, steps taken."""

    gid: str
    rank: int
    order: list[int]
    normalised: list[float]
    steps: list[int]
    done: int = 0

    @classmethod
    def of(cls, g: PruningGroup, scores: torch.Tensor, rank: int, round_to: int, mins: int):
        order = removal_order(g, scores)
        listed = scores.tolist()
        values = [listed[u] for u in order]
        scale = sum(values) / len(values) if values else 1.0
        scale = scale if scale > 0 else 1.0
        steps = valid_removals(g, order, round_to, mins)
        return cls(g.id, rank, order, [v / scale for v in values], steps)

    def has_next(self) -> bool:
        return self.done + 1 < len(self.steps)

    def next_units(self) -> list[int]:
        """The units the next step removes."""
        return self.order[self.steps[self.done] : self.steps[self.done + 1]]

    def next_scores(self) -> list[float]:
        """Their normalised scores."""
        return self.normalised[self.steps[self.done] : self.steps[self.done + 1]]

    def removed(self) -> tuple[int, ...]:
        return tuple(sorted(self.order[: self.steps[self.done]]))
