"""A pruning plan is data: which units of which group to remove.

``PruningPlan.removals`` maps a group id (the module path of the group's first layer, e.g.
``layer1.0.conv1``) to the unit indices to remove; ``units`` records each planned group's
unit count, so replaying a plan on a different model fails loudly instead of cutting the
wrong channels. Plans print as a table, save to and load from JSON, and replay on a fresh
trace of the same model with ``apply_plan`` — group ids and unit numbering are canonical (see
``graphopt.pruning.groups``), so the same model traced again gets the same groups.

JSON format (``format`` guards against reading something else)::

    {"format": "graphopt.pruning_plan/1", "source": "ResNet", "ignore": ["fc"],
     "groups": {"layer1.0.conv1": {"units": 64, "remove": [3, 17, ...]}, ...}}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch.fx import GraphModule

from graphopt.errors import GraphoptError
from graphopt.ir import propagate_shapes
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.groups import PruningGroup, build_groups
from graphopt.pruning.surgery import apply_removals

__all__ = ["FORMAT", "PruningPlan", "apply_plan", "check_plan"]

FORMAT = "graphopt.pruning_plan/1"


@dataclass(frozen=True)
class PruningPlan:
    """Group id → unit indices to remove (sorted, non-empty), and group id → unit count."""

    removals: Mapping[str, tuple[int, ...]]
    units: Mapping[str, int] = field(default_factory=dict)
    ignore: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        removals = {g: tuple(sorted(set(map(int, u)))) for g, u in self.removals.items() if u}
        object.__setattr__(self, "removals", MappingProxyType(removals))
        object.__setattr__(self, "units", MappingProxyType(dict(self.units)))
        object.__setattr__(self, "ignore", tuple(self.ignore))

    @classmethod
    def for_groups(
        cls,
        groups: Sequence[PruningGroup],
        removals: Mapping[str, Sequence[int]],
        *,
        ignore: Sequence[str] = (),
        source: str = "",
    ) -> PruningPlan:
        """A plan over ``groups`` (their unit counts are recorded for replay checks)."""
        units = {g.id: g.num_units for g in groups if removals.get(g.id)}
        return cls(dict(removals), units, tuple(ignore), source)

    @property
    def units_removed(self) -> int:
        return sum(len(u) for u in self.removals.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "source": self.source,
            "ignore": list(self.ignore),
            "groups": {
                gid: {"units": self.units.get(gid), "remove": list(units)}
                for gid, units in self.removals.items()
            },
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise GraphoptError(f"not a pruning plan: expected 'format': {FORMAT!r}")
        groups = data.get("groups") or {}
        try:
            removals = {gid: tuple(int(u) for u in g["remove"]) for gid, g in groups.items()}
            units = {
                gid: int(g["units"]) for gid, g in groups.items() if g.get("units") is not None
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphoptError(f"malformed pruning plan: {exc}") from exc
        return cls(removals, units, tuple(data.get("ignore") or ()), str(data.get("source", "")))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GraphoptError(f"cannot read pruning plan {path}: {exc}") from exc
        return cls.from_dict(data)

    def __str__(self) -> str:
        if not self.removals:
            return "pruning plan: nothing to remove"
        width = max(len(g) for g in self.removals)
        lines = [f"pruning plan ({self.units_removed} units from {len(self.removals)} groups)"]
        for gid, units in self.removals.items():
            total = self.units.get(gid, "?")
            lines.append(f"  {gid:<{width}}  remove {len(units):>4} of {total:>4}")
        return "\n".join(lines)


def check_plan(groups: Sequence[PruningGroup], plan: PruningPlan) -> None:
    """Raise ``GraphoptError`` unless every planned removal exists and is allowed."""
    by_id = {g.id: g for g in groups}
    for gid, units in plan.removals.items():
        group = by_id.get(gid)
        if group is None:
            raise GraphoptError(
                f"pruning plan names group {gid!r}, which this model does not have; "
                "replay a plan only on the model it was made for"
            )
        expected = plan.units.get(gid, group.num_units)
        if expected != group.num_units:
            raise GraphoptError(
                f"group {gid!r} has {group.num_units} units here but {expected} in the plan; "
                "the plan was made for a different model"
            )
        bad = [u for u in units if not 0 <= u < group.num_units]
        frozen = sorted(set(units) & set(group.frozen_units))
        if bad or frozen:
            why = f"units {bad} do not exist" if bad else f"units {frozen} are frozen"
            raise GraphoptError(f"pruning plan for group {gid!r}: {why} ({group.describe()})")
        if len(units) >= group.num_units:
            raise GraphoptError(f"pruning plan removes every unit of group {gid!r}")


def apply_plan(gm: GraphModule, plan: PruningPlan) -> GraphModule:
    """Replay ``plan`` on ``gm`` (a fresh trace of the model it was made for), in place.

    The graph is recompiled, and its shapes re-propagated when ``gm`` carries the example
    inputs of its capture, so the result runs and can be analysed right away.
    """
    groups = build_groups(build_channel_graph(gm, ignore=plan.ignore))
    check_plan(groups, plan)
    apply_removals(gm, groups, plan.removals)
    gm.graph.lint()
    gm.recompile()
    inputs = gm.meta.get("graphopt_example_inputs")
    if inputs is not None:
        propagate_shapes(gm, tuple(inputs))
    return gm
