"""Pruning groups: channels that must be removed together, as immutable data.

A group is a connected component of the dependency graph (see
``graphopt.pruning.dependency``): the layers whose channels are coupled, e.g. every conv that
feeds one ResNet stage's residual adds. Its *units* are the classes of coupled atoms: for a
plain conv, unit ``u`` is output channel ``u``; for attention, unit ``h`` is head ``h``; for
a grouped conv's input, unit ``g`` is group ``g``. Units are numbered canonically, by first
appearance in the group's layers in graph order, so the same model traced again gets the same
numbering and a plan (group id → units) can be replayed.

A member says, for one node and one role (``out``, ``in``, ``norm``, ``shape``, ``split``,
``groups``, ``heads``), which positions along that node's channel dimension belong to each
unit: for a linear after ``flatten`` of ``(N, C, H, W)``, unit ``c`` owns input features
``c·H·W … (c+1)·H·W − 1``. A node can be a member of several groups (a BatchNorm after a
``cat``); its positions are disjoint between them. ``size`` is the length of that dimension
over all groups, which the surgery needs to turn removed positions into kept ones.

Frozen units can never be removed; ``frozen_reasons`` says why (a unit reaching the model
output, an op pruning does not understand, an ignored layer, …). Group ids are the module
path of the group's first layer (``layer1.0.conv1``), or its node name when it has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from graphopt.ir import module_path
from graphopt.pruning.dependency import ChannelGraph, op_name

__all__ = ["Member", "PruningGroup", "build_groups"]


@dataclass(frozen=True)
class Member:
    """One node's share of a group: ``indices[u]`` are the positions unit ``u`` owns."""

    node: str
    module: str
    op: str
    role: str
    size: int
    indices: tuple[tuple[int, ...], ...]
    detail: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"{self.module or self.node}:{self.role}"


@dataclass(frozen=True)
class PruningGroup:
    """Coupled channels of several layers; ``widths[u]``: channels of unit ``u`` per layer."""

    id: str
    num_units: int
    widths: tuple[int, ...]
    members: tuple[Member, ...]
    frozen_units: tuple[int, ...]
    frozen_reasons: tuple[str, ...]

    @property
    def prunable_units(self) -> tuple[int, ...]:
        frozen = set(self.frozen_units)
        return tuple(u for u in range(self.num_units) if u not in frozen)

    @property
    def frozen(self) -> bool:
        """True when no unit of the group can be removed."""
        return len(self.frozen_units) == self.num_units

    @property
    def channels(self) -> int:
        return sum(self.widths)

    def describe(self) -> str:
        """One line: id, units, members and (if any) why units are frozen."""
        width = f"{self.widths[0]} ch" if len(set(self.widths)) == 1 else "mixed widths"
        text = (
            f"{self.id}: {self.num_units} units ({width}), "
            f"members {', '.join(str(m) for m in self.members)}"
        )
        if self.frozen_units:
            text += f"; {len(self.frozen_units)} frozen: {'; '.join(self.frozen_reasons)}"
        return text


def build_groups(cg: ChannelGraph) -> tuple[PruningGroup, ...]:
    """The groups of ``cg`` that contain a layer's channels, in graph order."""
    components = sorted(nx.connected_components(cg.graph), key=min)
    comp_of = {space: k for k, comp in enumerate(components) for space in comp}
    unit_of: list[dict[int, int]] = [{} for _ in components]
    # per atom, once: its component (the same as its class's: a coupling joins the spaces)
    # and its class's unit; the per-record loop below runs over every position of every
    # layer, ~10⁵ for a ResNet-50, so it only indexes lists
    atom_comp: list[int] = []
    atom_unit: list[int] = []
    for space in cg.spaces:
        k = comp_of[space.id]
        table = unit_of[k]
        for atom in range(space.start, space.start + space.size):
            atom_unit.append(table.setdefault(cg.find(atom), len(table)))
            atom_comp.append(k)
    buckets: list[dict[tuple[str, str], list[list[int]]]] = [{} for _ in components]
    record_of = {}
    for rec in cg.records:
        key = (rec.node, rec.role)
        record_of[key] = rec
        for pos, atom in enumerate(rec.atoms):
            k = atom_comp[atom]
            lists = buckets[k].get(key)
            if lists is None:
                lists = buckets[k][key] = [[] for _ in unit_of[k]]
            lists[atom_unit[atom]].append(pos)

    nodes = {n.name: n for n in cg.gm.graph.nodes}
    groups, taken = [], set()
    for k, comp in enumerate(components):
        sources = [cg.spaces[s] for s in sorted(comp) if cg.spaces[s].source]
        if not sources:
            continue  # only fixed channels (a graph input joined by cat): nothing to prune
        gid = sources[0].module or sources[0].node
        gid = gid if gid not in taken else f"{gid}@{sources[0].node}"
        taken.add(gid)
        members = tuple(
            Member(
                node=name,
                module=module_path(nodes[name]),
                op=op_name(nodes[name]),
                role=role,
                size=len(record_of[(name, role)].atoms),
                indices=tuple(tuple(p) for p in lists),
                detail=record_of[(name, role)].detail,
            )
            for (name, role), lists in buckets[k].items()
        )
        roots = list(unit_of[k])
        frozen = tuple(u for u, root in enumerate(roots) if cg.frozen_reasons(root))
        reasons: list[str] = []
        for u in frozen:
            reasons.extend(r for r in cg.frozen_reasons(roots[u]) if r not in reasons)
        outs = [m for m in members if m.role == "out"]
        widths = tuple(
            max((len(m.indices[u]) for m in outs), default=1) or 1 for u in range(len(roots))
        )
        groups.append(PruningGroup(gid, len(roots), widths, members, frozen, tuple(reasons)))
    return tuple(groups)
