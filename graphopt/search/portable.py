"""A GraphModule as plain picklable data, to send a candidate to another process (a Ray task).

Why not pickle the GraphModule: the module of ``torch.export`` does not pickle. Its ATen
targets (``torch.ops.aten.conv2d.default``) are pybind objects without a reduce, its
``_guards_fn`` submodule and instance-level ``train``/``eval`` hold torch's config module, and
``node.meta["val"]`` holds fake tensors tied to the capture's ``FakeTensorMode``.
(``GraphModule.__reduce__`` would also re-trace the generated code, renaming nodes.) What a
worker needs is only to *run* and *train* the model, so :func:`pack` keeps the graph's nodes
(op, name, target by qualified name, arguments with nodes as references), its pytree calling
convention, its tensors (parameters keep ``requires_grad``) and the picklable module-level
meta; node meta and the input-guard module (a check on shapes, never used by another node)
stay behind. :func:`unpack` rebuilds a GraphModule that computes the same outputs.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.fx import Graph, GraphModule, Node
from torch.fx.node import map_aggregate, map_arg

from graphopt.errors import GraphoptError

__all__ = ["PortableGraph", "pack", "unpack"]


@dataclass(frozen=True)
class _Ref:
    """A node argument: the node named ``name``."""

    name: str


@dataclass(frozen=True)
class _Op:
    """An operator target by name: ``torch.ops.<namespace>.<name>[.<overload>]``."""

    namespace: str
    name: str
    overload: str | None

    def resolve(self) -> Any:
        packet = getattr(getattr(torch.ops, self.namespace), self.name)
        return packet if self.overload is None else getattr(packet, self.overload)


@dataclass(frozen=True)
class PortableGraph:
    """What :func:`pack` keeps of a GraphModule (see the module docstring)."""

    nodes: tuple[tuple[str, str, Any, Any, Any], ...]  # op, name, target, args, kwargs
    codegen: Any
    parameters: dict[str, torch.Tensor]
    frozen: frozenset[str]  # parameters without requires_grad
    buffers: dict[str, torch.Tensor]
    constants: dict[str, Any]
    aliases: dict[str, str]  # a tied parameter's other names: name -> the one packed
    meta: dict[str, Any]
    training: bool


def pack(gm: GraphModule) -> PortableGraph:
    """``gm`` as picklable data; a ``GraphoptError`` names what cannot travel."""
    nodes = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and not node.users and _is_guard(gm, node.target):
            continue
        if node.op == "call_module":
            raise GraphoptError(f"node {node.name} calls submodule {node.target!r}: not portable")
        args = map_arg(node.args, lambda n: _Ref(n.name))
        kwargs = map_arg(node.kwargs, lambda n: _Ref(n.name))
        nodes.append((node.op, node.name, _target(node), args, kwargs))
    parameters = dict(gm.named_parameters())
    buffers = dict(gm.named_buffers())
    aliases = _aliases(gm, {id(t): k for k, t in (*parameters.items(), *buffers.items())})
    constants = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.target not in parameters and node.target not in buffers:
            constants[node.target] = _attribute(gm, node.target)
    packed = PortableGraph(
        nodes=tuple(nodes),
        codegen=gm.graph._codegen,
        parameters={k: v.detach() for k, v in parameters.items()},
        frozen=frozenset(k for k, v in parameters.items() if not v.requires_grad),
        buffers=buffers,
        aliases=aliases,
        constants=constants,
        meta={k: v for k, v in gm.meta.items() if _picklable(v)},
        training=gm.training,
    )
    try:
        pickle.dumps(packed.codegen)
        pickle.dumps(packed.nodes)
    except Exception as exc:
        raise GraphoptError(f"the graph does not pickle: {type(exc).__name__}: {exc}") from exc
    return packed


def unpack(packed: PortableGraph) -> GraphModule:
    """The GraphModule ``packed`` was made from (same outputs; no node meta)."""
    root = nn.Module()
    for name, value in packed.parameters.items():
        _set(root, name, nn.Parameter(value.clone(), requires_grad=name not in packed.frozen))
    for name, value in packed.buffers.items():
        _set(root, name, value.clone())
    for name, value in packed.constants.items():
        _set(root, name, value)
    for name, first in packed.aliases.items():
        _set(root, name, _attribute(root, first))
    graph = Graph()
    made: dict[str, Node] = {}

    def deref(a: Any) -> Any:
        return made[a.name] if isinstance(a, _Ref) else a

    for op, name, target, args, kwargs in packed.nodes:
        target = target.resolve() if isinstance(target, _Op) else target
        made[name] = graph.create_node(
            op, target, map_aggregate(args, deref), map_aggregate(kwargs, deref), name=name
        )
    graph._codegen = packed.codegen
    gm = GraphModule(root, graph)
    gm.meta.update(packed.meta)
    gm.train(packed.training)
    return gm


def _target(node: Node) -> Any:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return _Op(target.namespace, target._opname, target._overloadname)
    if isinstance(target, torch._ops.OpOverloadPacket):
        return _Op(target._qualified_op_name.split("::")[0], target.__name__.split(".")[-1], None)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return _Op("higher_order", target.name(), None)
    return target  # a string (attributes, methods) or a plain function, pickled by reference


def _aliases(gm: nn.Module, first: dict[int, str]) -> dict[str, str]:
    """Names under which an already named tensor appears again (tied weights stay tied)."""
    every = [
        *gm.named_parameters(remove_duplicate=False),
        *gm.named_buffers(remove_duplicate=False),
    ]
    return {k: first[id(t)] for k, t in every if first.get(id(t), k) != k}


def _is_guard(gm: GraphModule, target: str) -> bool:
    """The input-shape check ``torch.export`` adds as a submodule (torch >= 2.9)."""
    guards = getattr(torch.export._unlift, "GuardsFn", None)
    return guards is not None and isinstance(_attribute(gm, target), guards)


def _attribute(gm: nn.Module, path: str) -> Any:
    value: Any = gm
    for part in path.split("."):
        value = getattr(value, part)
    return value


def _set(root: nn.Module, path: str, value: Any) -> None:
    *owners, leaf = path.split(".")
    module = root
    for part in owners:
        if not hasattr(module, part):
            module.add_module(part, nn.Module())
        module = getattr(module, part)
    if isinstance(value, nn.Parameter):
        module.register_parameter(leaf, value)
    elif isinstance(value, torch.Tensor):
        module.register_buffer(leaf, value)
    else:
        setattr(module, leaf, value)


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True
