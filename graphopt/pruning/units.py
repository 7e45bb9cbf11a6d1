"""Unit bookkeeping across rounds of pruning: which original units of each group are gone.

Why a book: iterative pruning (the ``prune`` pass with ``steps > 1``) and NetAdapt
(``graphopt.search.netadapt``) both cut a graph several times and rebuild its groups after
every cut. A rebuilt group numbers its units ``0..n-1`` again, but a ``PruningPlan`` must name
the *original* units so that it replays in one shot on a fresh trace. The mapping is simple
because surgery keeps the survivors' channel order and groups number units by first
appearance: a survivor keeps its rank, so current unit ``u`` of group ``g`` is original unit
``alive[g][u]``. The book also holds what both report from it: channels before and after per
group, channels removed, the frozen groups and the plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from graphopt.pruning.groups import PruningGroup
from graphopt.pruning.plan import PruningPlan

__all__ = ["UnitBook", "channels_of"]


def channels_of(group: PruningGroup, units: Sequence[int]) -> int:
    """Channels that ``units`` of ``group`` span (a unit may be several: a head, a conv group)."""
    return sum(group.widths[u] for u in units)


@dataclass
class UnitBook:
    """The original groups, and per group its original units still alive and those removed.

    ``removed[g]`` is in removal order (a plan sorts it); only groups that lost units have an
    entry. Feed it each round's removals in that round's unit numbering (``record``), after
    checking the rebuilt groups against it (``mismatch``).
    """

    groups: tuple[PruningGroup, ...]
    alive: dict[str, list[int]]
    removed: dict[str, list[int]]

    @classmethod
    def start(cls, groups: Sequence[PruningGroup]) -> UnitBook:
        """A book over the groups of the unpruned graph: every unit alive."""
        return cls(tuple(groups), {g.id: list(range(g.num_units)) for g in groups}, {})

    def original_units(self, group_id: str) -> int:
        """How many units the group had before any pruning."""
        return len(self.alive[group_id]) + self.gone(group_id)

    def gone(self, group_id: str) -> int:
        """How many units of the group were removed so far."""
        return len(self.removed.get(group_id, ()))

    def mismatch(self, groups: Sequence[PruningGroup]) -> str | None:
        """Why ``groups`` (rebuilt on the pruned graph) are not the book's, or None if they are.

        They must be the original groups with exactly the surviving unit counts; anything else
        means the graph changed other than by pruning, and the unit mapping no longer holds.
        """
        found = {g.id: g.num_units for g in groups}
        expected = {gid: len(alive) for gid, alive in self.alive.items()}
        if found == expected:
            return None
        changed = sorted(set(found.items()) ^ set(expected.items()))[0][0]
        return f"group {changed!r} has {found.get(changed)} units, expected {expected.get(changed)}"

    def record(self, removals: Mapping[str, Sequence[int]]) -> None:
        """Remove ``removals`` (group id → units in the current numbering) from the book."""
        for gid, units in removals.items():
            alive, gone = self.alive[gid], set(units)
            self.removed.setdefault(gid, []).extend(alive[u] for u in units)
            self.alive[gid] = [a for u, a in enumerate(alive) if u not in gone]

    def plan(self, *, ignore: Sequence[str] = (), source: str = "") -> PruningPlan:
        """Everything removed so far, as a plan over the original groups (replayable)."""
        return PruningPlan.for_groups(self.groups, self.removed, ignore=ignore, source=source)

    def channels_removed(self) -> int:
        """Channels removed over all groups (units weighted by their widths)."""
        by_id = {g.id: g for g in self.groups}
        return sum(channels_of(by_id[gid], units) for gid, units in self.removed.items())

    def channels(self) -> list[dict[str, Any]]:
        """Per prunable group: channels before → after and the ratio kept."""
        rows = []
        for g in self.groups:
            if g.frozen:
                continue
            after = channels_of(g, self.alive[g.id])
            rows.append(
                {
                    "group": g.id,
                    "before": g.channels,
                    "after": after,
                    "ratio": round(after / g.channels, 4),
                }
            )
        return rows

    def frozen(self) -> list[dict[str, str]]:
        """``{"group", "reason"}`` per original group none of whose units can go."""
        return [
            {"group": g.id, "reason": "; ".join(g.frozen_reasons)} for g in self.groups if g.frozen
        ]
