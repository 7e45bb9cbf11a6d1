"""The channel-dependency graph: which channels of which layers must be removed together.

Model. Every prunable channel starts as an *atom*: output channel ``i`` of a conv or linear
layer, or column ``i`` of an embedding (a *source space* of atoms per layer). The analysis
walks the ATen FX graph once, in topological order, and gives every tensor a *layout*: the one
dimension that carries channels and, for each position along it, the atom found there
(``Layout(dim, atoms)``); a tensor with no layout has channels that pruning never changes
(graph inputs, constants, outputs of ops the analysis does not understand).

Op rules (``graphopt.pruning.rules``) move layouts through the graph and *couple* atoms with a
union-find: two atoms in one class are removed together. A residual ``add`` couples its
operands position by position; ``cat`` concatenates atom lists (no coupling); a grouped or
depthwise conv couples each group's input and output channels; a reshape that splits the
channel dimension into blocks (attention heads, channel shuffle) couples each block; attention
couples head ``h`` of q, k and v. ``flatten`` repeats each channel's atom over its spatial
positions, so channel ``c`` of an ``(N, C, H, W)`` tensor owns features ``c·H·W … (c+1)·H·W−1``
of the flattened tensor. A class can also be *frozen*, with the reasons why: it reaches the
model's output, an op the analysis does not understand, an ignored layer, or a tensor whose
channels cannot change. An unknown op freezes every channel that touches it, so pruning can
only ever make a graph smaller, never break it.

Where a rewrite will be needed, a rule leaves a ``Record``: the node, its role (``out`` rows
and ``in`` columns of a weight, a ``norm`` layer's per-channel tensors, a ``shape`` constant
of a view, ``split`` sizes, a grouped conv's ``groups``, attention ``heads``, a channel-wise
op's parameter) and the atom at each position. Groups (``graphopt.pruning.groups``) turn
classes and records into data.

Tied parameters. A rule that slices a parameter *claims* it: which of its dims it cuts, and
the atom at each position there. A parameter read by one node is simply owned. A parameter
read by several nodes (a token embedding tied to the LM head, a block applied twice) is
resolved once the walk is over: along a dim that every user claims, their atoms are coupled
position by position, so all uses lose the same rows or columns and keep sharing one sliced
tensor; a dim that some user claims and another keeps whole, or a user that is not a rule
that slices (an unknown op, the graph output), freezes the claimed channels.

The dependency graph proper is a ``networkx.Graph`` over spaces: an edge joins two spaces when
an op coupled their atoms (edge attribute ``via``: the coupling ops). Its connected
components are the pruning groups.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch.fx import GraphModule, Node

from graphopt.ir import module_path

__all__ = [
    "NO_DIM",
    "ChannelGraph",
    "Claim",
    "Layout",
    "Record",
    "Space",
    "build_channel_graph",
    "layer_parameters",
]

NO_DIM = -1
"""In a record's ``detail``: this tensor has no dim to cut (no bias, a per-group weight dim)."""


@dataclass(frozen=True)
class Layout:
    """The channel dimension of a tensor and the atom at each of its positions."""

    dim: int
    atoms: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.atoms)


@dataclass(frozen=True)
class Space:
    """A contiguous block of atoms created by one node.

    ``source`` spaces are a layer's output channels (conv/linear/embedding). Other spaces stand
    for channels of a tensor that cannot change (a graph input joined by ``cat``, …) and are
    created frozen.
    """

    id: int
    node: str
    module: str
    start: int
    size: int
    source: bool


@dataclass(frozen=True)
class Record:
    """A place a rewrite touches: ``atoms[p]`` is the atom at position ``p`` of ``role``."""

    node: str
    role: str
    atoms: tuple[int, ...]
    detail: tuple[int, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A rule slices parameter ``target`` at ``node``: ``dims`` maps a dim to its atoms."""

    node: str
    target: str
    dims: tuple[tuple[int, tuple[int, ...]], ...]


@dataclass
class ChannelGraph:
    """Atoms (union-find with frozen reasons), spaces, layouts and records of one graph."""

    gm: GraphModule
    ignore: tuple[str, ...] = ()
    spaces: list[Space] = field(default_factory=list)
    graph: nx.Graph = field(default_factory=nx.Graph)
    layouts: dict[Node, object] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    ignored_matches: set[str] = field(default_factory=set)
    attr_uses: dict[str, int] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    _parent: list[int] = field(default_factory=list)
    _space_of: list[int] = field(default_factory=list)
    _reasons: dict[int, list[str]] = field(default_factory=dict)
    _fresh: dict[tuple[Node, int], tuple[int, ...]] = field(default_factory=dict)

    # ---- atoms --------------------------------------------------------------------------
    def find(self, atom: int) -> int:
        root = atom
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[atom] != root:  # path compression
            self._parent[atom], atom = root, self._parent[atom]
        return root

    def union(self, a: int, b: int, via: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self._parent[rb] = ra
        reasons = self._reasons.pop(rb, [])
        if reasons:
            merged = self._reasons.setdefault(ra, [])
            merged.extend(r for r in reasons if r not in merged)
        sa, sb = self._space_of[a], self._space_of[b]
        if sa != sb:
            if self.graph.has_edge(sa, sb):
                self.graph.edges[sa, sb]["via"].add(via)
            else:
                self.graph.add_edge(sa, sb, via={via})

    def union_all(self, atoms: Iterable[int], via: str) -> None:
        atoms = list(atoms)
        for other in atoms[1:]:
            self.union(atoms[0], other, via)

    def couple(self, a: Layout, b: Layout, via: str) -> None:
        """Couple two layouts position by position (they have the same length)."""
        for x, y in zip(a.atoms, b.atoms, strict=True):
            self.union(x, y, via)

    def freeze(self, atoms: Iterable[int], reason: str) -> None:
        for atom in atoms:
            reasons = self._reasons.setdefault(self.find(atom), [])
            if reason not in reasons:
                reasons.append(reason)

    def frozen_reasons(self, atom: int) -> tuple[str, ...]:
        return tuple(self._reasons.get(self.find(atom), ()))

    def space_of(self, atom: int) -> Space:
        return self.spaces[self._space_of[atom]]

    # ---- spaces and layouts ----------------------------------------------------------------
    def new_space(self, node: Node, size: int, *, source: bool, reason: str = "") -> tuple:
        start = len(self._parent)
        space = Space(len(self.spaces), node.name, module_path(node), start, size, source)
        self.spaces.append(space)
        self.graph.add_node(space.id, node=node.name, module=space.module, source=source)
        self._parent.extend(range(start, start + size))
        self._space_of.extend([space.id] * size)
        atoms = tuple(range(start, start + size))
        if reason:
            self.freeze(atoms, reason)
        if source and self.ignore:
            matched = [p for p in self.ignore if _under(space.module, p)]
            if matched:
                self.ignored_matches.update(matched)
                self.freeze(atoms, f"output channels of an ignored layer (ignore={matched[0]!r})")
        return atoms

    def layout(self, node: object) -> Layout | None:
        value = self.layouts.get(node) if isinstance(node, Node) else None
        return value if isinstance(value, Layout) else None

    def layout_on(self, node: Node, dim: int) -> tuple[int, ...]:
        """The atoms along ``dim`` of ``node``: its own, or frozen ones if it has none there."""
        lay = self.layout(node)
        if lay is not None and lay.dim == dim:
            return lay.atoms
        key = (node, dim)
        if key not in self._fresh:
            size = int(node.meta["val"].shape[dim])
            what = "graph input" if node.op == "placeholder" else "tensor"
            self._fresh[key] = self.new_space(
                node, size, source=False, reason=f"channels of {what} {node.name} cannot change"
            )
        return self._fresh[key]

    def freeze_inputs(self, node: Node, reason: str) -> None:
        for arg in _flat_nodes((node.args, node.kwargs)):
            value = self.layouts.get(arg)
            for lay in value if isinstance(value, list) else [value]:
                if isinstance(lay, Layout):
                    self.freeze(lay.atoms, reason)

    def record(self, node: Node, role: str, atoms: Sequence[int], detail: tuple = ()) -> None:
        self.records.append(Record(node.name, role, tuple(atoms), tuple(detail)))

    # ---- parameters -----------------------------------------------------------------------
    def claim(
        self, node: Node, claims: Sequence[tuple[object, Mapping[int, Sequence[int] | None]]]
    ) -> str | None:
        """Claim parameters to slice: ``(attr, {dim: atoms along it})`` per parameter.

        A dim whose atoms are None is kept whole. Returns the reason slicing is unsafe (a
        weight that is computed, not a parameter), else None. A parameter read only by
        ``node`` is its own; one that other nodes read too (tied) is checked against their
        claims at the end of the walk (``resolve_ties``) instead of being frozen outright.
        """
        for attr, _ in claims:
            if attr is not None and (not isinstance(attr, Node) or attr.op != "get_attr"):
                return f"{node.name} takes a weight that is not a parameter"
        for attr, dims in claims:
            if attr is not None and self._shared(attr):
                kept = tuple((d, tuple(a)) for d, a in sorted(dims.items()) if a is not None)
                self.claims.append(Claim(node.name, self.param_key(attr), kept))
        return None

    def resolve_ties(self) -> None:
        """Couple the atoms that the users of each shared parameter claim on the same dim."""
        by_target: dict[str, list[Claim]] = {}
        for c in self.claims:
            by_target.setdefault(c.target, []).append(c)
        users: dict[str, set[str]] = {}
        for n in self.gm.graph.nodes:
            if n.op == "get_attr" and self.param_key(n) in by_target:
                users.setdefault(self.param_key(n), set()).update(u.name for u in n.users)
        for target, claims in by_target.items():
            self._resolve_tie(target, claims, users.get(target, set()))

    def _resolve_tie(self, target: str, claims: list[Claim], users: set[str]) -> None:
        """Couple one shared parameter's claims dim by dim, or freeze what cannot be tied."""
        unclaimed = sorted(users - {c.node for c in claims})
        per_claim = [dict(c.dims) for c in claims]
        for d in sorted({d for dims in per_claim for d in dims}):
            having = [dims[d] for dims in per_claim if d in dims]
            keeping = [c.node for c, dims in zip(claims, per_claim, strict=True) if d not in dims]
            if unclaimed:
                reason = f"{target} is shared with {unclaimed[0]}, which pruning does not slice"
            elif keeping:
                reason = f"{target} is shared with {keeping[0]}, which keeps its dim {d} whole"
            elif len({len(atoms) for atoms in having}) != 1:
                reason = f"{target} is shared by uses of different sizes along dim {d}"
            else:
                for atoms in having[1:]:
                    for x, y in zip(having[0], atoms, strict=True):
                        self.union(x, y, via=f"tied {target}")
                continue
            for atoms in having:
                self.freeze(atoms, reason)

    def param_key(self, attr: Node) -> str:
        """One name per tensor: a parameter registered under two names (tied) is one key."""
        return self.aliases.get(str(attr.target), str(attr.target))

    def _shared(self, attr: Node) -> bool:
        return len(attr.users) != 1 or self.attr_uses.get(self.param_key(attr), 0) > 1


# ---- node helpers shared by the op rules ------------------------------------------------


def val(node: object) -> object:
    """The value recorded at capture (a FakeTensor, a list of them, a SymInt) or None."""
    return node.meta.get("val") if isinstance(node, Node) else None


def arg(node: Node, index: int, name: str, default: object = None) -> object:
    """An argument given either positionally (at ``index``) or by keyword (``name``)."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def layer_parameters(node: Node) -> tuple[Node | None, Node | None]:
    """(weight, bias) of a layer node, as the rules of ``layer_rules`` read them.

    Conv, transposed conv, linear: ``args[1]``, ``args[2]``; embedding and a gather from a
    parameter (``aten.index``): the table; the matmul
    family (``mm``, ``matmul``, ``bmm``, ``addmm``, ``einsum``): the one ``get_attr`` operand,
    and ``addmm``'s ``args[0]`` as the bias.
    """
    name = getattr(getattr(node.target, "overloadpacket", None), "__name__", "")
    if name in ("embedding", "index"):  # index: rows of a table gathered (``index_rule``)
        return node.args[0], None
    if name in _MATMULS:
        operands = _MATMULS[name](node)
        params = [a for a in operands if isinstance(a, Node) and a.op == "get_attr"]
        return (params[0] if params else None), (node.args[0] if name == "addmm" else None)
    return node.args[1], arg(node, 2, "bias")


_MATMULS = {  # the matrix operands of each matmul-family op
    "mm": lambda n: n.args[:2],
    "matmul": lambda n: n.args[:2],
    "bmm": lambda n: n.args[:2],
    "addmm": lambda n: n.args[1:3],
    "einsum": lambda n: n.args[1],
}


def norm_dim(d: int, rank: int) -> int:
    """A dim index made non-negative."""
    return d + rank if d < 0 else d


def static(size: object) -> int | None:
    """``size`` if it is a plain int; None for a symbolic (batch) size."""
    return size if isinstance(size, int) else None


def set_layout(cg: ChannelGraph, node: Node, lay: Layout | None) -> None:
    """Set the output layout; for a multi-output op every tensor of the same rank gets it."""
    out = val(node)
    if isinstance(out, (list, tuple)):
        rank = val(node.args[0]).dim() if lay is not None else -1
        cg.layouts[node] = [
            lay if isinstance(o, torch.Tensor) and o.dim() == rank else None for o in out
        ]
    else:
        cg.layouts[node] = lay


def why(node: Node, what: str) -> str:
    """A frozen reason naming the op and the node: ``aten.cumsum.default at cumsum …``."""
    return f"{op_name(node)} at {node.name} {what}"


def unknown(cg: ChannelGraph, node: Node) -> None:
    """The rule of every op without one: freeze the channels of all its inputs."""
    cg.freeze_inputs(node, why(node, "is not understood by channel pruning"))
    cg.layouts[node] = None


def freeze_and_clear(cg: ChannelGraph, node: Node, lay: Layout | None, what: str) -> None:
    """Freeze the input's channels (``what`` says why); the output gets no layout."""
    if lay is not None:
        cg.freeze(lay.atoms, why(node, what))
    set_layout(cg, node, None)


def build_channel_graph(gm: GraphModule, *, ignore: Sequence[str] = ()) -> ChannelGraph:
    """Walk ``gm`` once and return its channel graph (see the module docstring).

    ``ignore`` lists module paths whose output channels are frozen (a path also covers its
    submodules: ``"layer4"`` freezes every layer under it).
    """
    from graphopt.pruning.rules import apply_rule

    cg = ChannelGraph(gm=gm, ignore=tuple(ignore), aliases=_tensor_aliases(gm))
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            key = cg.param_key(n)
            cg.attr_uses[key] = cg.attr_uses.get(key, 0) + len(n.users)
    for node in gm.graph.nodes:
        n_records, n_spaces, n_claims = len(cg.records), len(cg.spaces), len(cg.claims)
        try:
            apply_rule(cg, node)
        except Exception as exc:  # an unexpected op form: freeze, never guess
            reason = f"{op_name(node)} at {node.name} could not be analysed ({exc})"
            cg.records[n_records:] = [r for r in cg.records[n_records:] if r.node != node.name]
            for claim in cg.claims[n_claims:]:
                cg.freeze((a for _, atoms in claim.dims for a in atoms), reason)
            del cg.claims[n_claims:]
            for space in cg.spaces[n_spaces:]:
                cg.freeze(range(space.start, space.start + space.size), reason)
            cg.freeze_inputs(node, reason)
            cg.layouts[node] = None
    cg.resolve_ties()
    return cg


def _tensor_aliases(gm: GraphModule) -> dict[str, str]:
    """Attribute name → the first name of the same tensor (tied weights have two names)."""
    first: dict[int, str] = {}
    named = itertools.chain(
        gm.named_parameters(remove_duplicate=False), gm.named_buffers(remove_duplicate=False)
    )
    return {name: first.setdefault(id(t), name) for name, t in named}


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def op_name(node: Node) -> str:
    """``aten.conv2d.default`` for ATen ops, the target's name otherwise."""
    target = node.target
    name = getattr(target, "__name__", None) or str(target)
    return f"aten.{name}" if isinstance(target, torch._ops.OpOverload) else name


def _flat_nodes(value: object) -> list[Node]:
    out: list[Node] = []
    torch.fx.node.map_arg(value, out.append)
    return out
