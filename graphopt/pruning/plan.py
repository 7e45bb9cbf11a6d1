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
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch.fx import GraphModule

from graphopt.cache import atomic_write
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
        removals = {
            g: tuple(sorted({_index(i, f"group {g!r} unit index") for i in u}))
            for g, u in self.removals.items()
            if len(u)
        }
        units = {g: _index(n, f"group {g!r} unit count") for g, n in self.units.items()}
        object.__setattr__(self, "removals", MappingProxyType(removals))
        object.__setattr__(self, "units", MappingProxyType(units))
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
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "pruning plan") -> PruningPlan:
        """Parse and validate the JSON form; ``where`` (e.g. the file) starts every error.

        Strict on purpose: a plan decides which channels are cut, so a float index (1.9 would
        have become 1), a bool (``true`` is 1 to Python), a negative or out-of-range index or
        a duplicate is refused with its group named, never coerced.
        """
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise GraphoptError(f"{where}: not a pruning plan: expected 'format': {FORMAT!r}")
        source, ignore = data.get("source", ""), data.get("ignore") or []
        if not isinstance(source, str):
            raise GraphoptError(f"{where}: 'source' must be a string, got {_kind(source)}")
        if not isinstance(ignore, list) or not all(isinstance(i, str) for i in ignore):
            raise GraphoptError(f"{where}: 'ignore' must be a list of module paths (strings)")
        groups = data.get("groups") or {}
        if not isinstance(groups, Mapping):
            raise GraphoptError(f"{where}: 'groups' must be an object, got {_kind(groups)}")
        removals: dict[str, tuple[int, ...]] = {}
        units: dict[str, int] = {}
        for gid, group in groups.items():
            count, remove = _parse_group(gid, group, where)
            removals[gid] = remove
            if count is not None:
                units[gid] = count
        return cls(removals, units, tuple(ignore), source)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically: a crash or a concurrent run never leaves half a plan."""
        atomic_write(Path(path), (self.to_json() + "\n").encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        """Read a plan file; every problem is one ``GraphoptError`` line naming the file.

        Beyond ``from_dict``'s checks, this refuses what Python's json module would accept
        but no JSON tool writes (``NaN``, ``Infinity``, a key given twice, where the last
        would silently win), and turns bytes that are not UTF-8 and nesting deep enough to
        exhaust the recursion limit into that same one-line error.
        """
        where = f"pruning plan {path}"
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise GraphoptError(f"cannot read {where}: {exc.strerror or exc}") from exc
        try:
            text = raw.decode("utf-8-sig")  # a byte-order mark is harmless: accept it
        except UnicodeDecodeError as exc:
            raise GraphoptError(
                f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
            ) from exc
        try:
            data = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique)
        except _NotPlanJSON as exc:
            raise GraphoptError(f"{where}: {exc}") from exc
        except RecursionError as exc:
            raise GraphoptError(f"{where}: nested too deeply to be a pruning plan") from exc
        except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
            raise GraphoptError(f"{where}: not valid JSON: {exc}") from exc
        return cls.from_dict(data, where=where)

    def __str__(self) -> str:
        if not self.removals:
            return "pruning plan: nothing to remove"
        width = max(len(g) for g in self.removals)
        lines = [f"pruning plan ({self.units_removed} units from {len(self.removals)} groups)"]
        for gid, units in self.removals.items():
            total = self.units.get(gid, "?")
            lines.append(f"  {gid:<{width}}  remove {len(units):>4} of {total:>4}")
        return "\n".join(lines)


class _NotPlanJSON(ValueError):
    """JSON that Python's parser accepts but a plan must not contain."""


def _refuse_constant(name: str) -> None:
    raise _NotPlanJSON(f"contains {name}, which is not JSON; a plan holds only integers")


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _NotPlanJSON(f"key {key!r} appears twice in one object")
        result[key] = value
    return result


def _parse_group(gid: str, group: object, where: str) -> tuple[int | None, tuple[int, ...]]:
    """(unit count or None, unit indices) of one JSON group, each value checked."""
    if not isinstance(group, Mapping) or "remove" not in group:
        raise GraphoptError(f"{where}: group {gid!r} must be an object with a 'remove' list")
    count, remove = group.get("units"), group["remove"]
    if count is not None and (not _is_int(count) or count <= 0):
        raise GraphoptError(
            f"{where}: group {gid!r} 'units' must be a positive integer, got {_kind(count)}"
        )
    if not isinstance(remove, list):
        raise GraphoptError(f"{where}: group {gid!r} 'remove' must be a list, got {_kind(remove)}")
    for index in remove:
        if not _is_int(index):
            raise GraphoptError(
                f"{where}: group {gid!r} unit index {_kind(index)} is not an integer"
            )
        if index < 0 or (count is not None and index >= count):
            span = f"0..{count - 1}" if count is not None else "0 or more"
            raise GraphoptError(f"{where}: group {gid!r} unit index {index} out of range ({span})")
    if len(set(remove)) != len(remove):
        twice = sorted({i for i in remove if remove.count(i) > 1})
        raise GraphoptError(f"{where}: group {gid!r} lists units {twice} more than once")
    return count, tuple(remove)


def _is_int(value: object) -> bool:
    """A plain integer: not a bool (``True`` is 1 to Python) and not a float (1.0, 1.9)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: object) -> str:
    """``value`` as it reads in the file, with its JSON type (for one-line errors)."""
    text = json.dumps(value, allow_nan=True)
    text = text if len(text) <= 40 else text[:37] + "..."
    names = {bool: "boolean", float: "number", str: "string", list: "list", dict: "object"}
    return f"{text} ({names.get(type(value), type(value).__name__)})"


def _index(value: object, what: str) -> int:
    """``value`` as an int, for plans built in Python: numpy and 0-d tensor ints pass
    (``operator.index``), a float or a bool is refused rather than truncated."""
    if isinstance(value, bool):
        raise GraphoptError(f"pruning plan: {what} {value!r} is a bool, not an integer")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise GraphoptError(
            f"pruning plan: {what} {value!r} ({type(value).__name__}) is not an integer"
        ) from None


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
