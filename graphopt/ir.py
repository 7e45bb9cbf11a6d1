"""Helpers over the captured FX graph: parameter access, op matching, shape propagation.

The IR is the GraphModule that ``torch.export(...).module()`` returns: parameters and buffers
are ``get_attr`` nodes whose target is the original dotted name (``layer1.0.conv1.weight``),
ops are ``call_function`` nodes on ``torch.ops.aten`` overloads, and ``node.meta["val"]`` holds
a FakeTensor (symbolic batch) of every value.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.fx import GraphModule, Node

__all__ = [
    "VIEW_OPS",
    "count_parameters",
    "drop_unused_attribute",
    "get_tensor",
    "is_op",
    "iter_ops",
    "module_path",
    "node_shape",
    "paused_gc",
    "propagate_shapes",
    "set_tensor",
    "settle",
]

aten = torch.ops.aten

VIEW_OPS = (  # ops whose output shares its input's storage
    aten.view,
    aten.reshape,
    aten.flatten,
    aten.permute,
    aten.transpose,
    aten.t,
    aten.expand,
    aten.slice,
    aten.select,
    aten.unsqueeze,
    aten.squeeze,
    aten.alias,
    aten.detach,
    aten.unflatten,
    aten._unsafe_view,
    aten.split,
    aten.chunk,
    aten.unbind,
    aten.contiguous,
)


def is_op(node: Node, targets: Iterable[object]) -> bool:
    """True when ``node`` calls one of ``targets`` (OpOverloads or OpOverloadPackets)."""
    if node.op != "call_function":
        return False
    overload_packet = getattr(node.target, "overloadpacket", None)
    return any(node.target is t or overload_packet is t for t in targets)


def iter_ops(gm: GraphModule, targets: Iterable[object]) -> Iterator[Node]:
    targets = tuple(targets)
    return (n for n in list(gm.graph.nodes) if is_op(n, targets))


def get_tensor(gm: GraphModule, node: Node | None) -> torch.Tensor | None:
    """The parameter/buffer behind a ``get_attr`` node (None for None or non-attr nodes)."""
    if node is None or not isinstance(node, Node) or node.op != "get_attr":
        return None
    value = gm
    for part in str(node.target).split("."):
        value = getattr(value, part)
    return value if isinstance(value, torch.Tensor) else None


def set_tensor(
    gm: GraphModule, target: str, value: torch.Tensor, *, parameter: bool, copy: bool = True
) -> None:
    """Create or replace the attribute ``target`` (dotted) on ``gm``, creating submodules.

    ``value`` is copied unless ``copy=False`` (the caller's tensor is fresh and not shared).
    """
    *path, leaf = target.split(".")
    owner: nn.Module = gm
    for part in path:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
    if hasattr(owner, leaf):
        delattr(owner, leaf)
    value = value.detach().clone() if copy else value.detach()
    if parameter:
        owner.register_parameter(leaf, nn.Parameter(value, requires_grad=True))
    else:
        owner.register_buffer(leaf, value)


def node_shape(node: Node) -> tuple[int | torch.SymInt, ...] | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def module_path(node: Node) -> str:
    """The dotted path of the source ``nn.Module`` that produced ``node`` ('' if unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return str(path)


def count_parameters(gm: nn.Module) -> int:
    return sum(p.numel() for p in gm.parameters())


def settle(gm: GraphModule, example_inputs: tuple[torch.Tensor, ...], *, who: str) -> None:
    """After a rewrite: lint, recompile, re-propagate shapes — the one "settle the graph".

    The pass manager runs it after every pass; a pass that reads shapes between its own steps
    (iterative pruning, the search) runs it there too. ``who`` names the pass (or step) that
    left the graph, so a failure blames it: a ``PassError``.
    """
    from graphopt.errors import PassError

    try:
        gm.graph.lint()
    except Exception as exc:
        raise PassError(who, f"left an invalid graph: {exc}") from exc
    gm.recompile()
    try:
        propagate_shapes(gm, tuple(example_inputs))
    except Exception as exc:
        raise PassError(who, f"left a graph whose shapes do not propagate: {exc}") from exc


def propagate_shapes(gm: GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> None:
    """Recompute ``node.meta["val"]`` after a rewrite.

    Reuses the FakeTensorMode of the capture (so the batch dimension stays symbolic) when the
    placeholders still carry fake values; otherwise propagates concrete example shapes.

    The symbolic run goes through the Python dispatcher, as ``torch.export`` itself does.
    Without it a composite op such as ``aten.pad`` or ``aten.upsample_bilinear2d.vec`` whose
    fake result is not cached (its input changed, e.g. pruned channels) runs its C++ kernel,
    which reads the sizes as plain ints: that guards the batch symbol to its example value
    and, since the ShapeEnv is the capture's, specialises it for every graph of that capture
    (the original's MACs, counted per sample, then doubled after pruning a MobileNet).
    """
    from torch._dispatch.python import enable_python_dispatcher
    from torch._guards import detect_fake_mode
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    vals = [n.meta.get("val") for n in placeholders]
    mode = detect_fake_mode(vals) if all(isinstance(v, torch.Tensor) for v in vals) else None
    if mode is not None:
        with enable_python_dispatcher():
            FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*vals)
        return
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    FakeTensorProp(gm, fake_mode).propagate(*example_inputs)


def erase_unused_attributes(gm: GraphModule, prefixes: Iterable[str]) -> int:
    """Erase user-less ``get_attr`` nodes under ``prefixes`` and delete the tensors they held.

    Only the given module prefixes are touched: other user-less ``get_attr`` nodes (for
    example BN ``num_batches_tracked`` buffers) belong to layers this rewrite did not change.
    Returns the number of tensors deleted.
    """
    prefixes = tuple(p + "." for p in prefixes)
    deleted = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr" and not node.users and str(node.target).startswith(prefixes):
            target = str(node.target)
            gm.graph.erase_node(node)
            if not any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
                owner_path, _, leaf = target.rpartition(".")
                owner = gm.get_submodule(owner_path)
                if hasattr(owner, leaf):
                    delattr(owner, leaf)
                    deleted += 1
    return deleted


def fresh_attribute_name(gm: GraphModule, wanted: str) -> str:
    """``wanted`` if no attribute of ``gm`` has that dotted name, else ``wanted_1``, ``_2``…"""

    def taken(name: str) -> bool:
        try:
            gm.get_parameter(name)
            return True
        except AttributeError:
            pass
        try:
            gm.get_buffer(name)
            return True
        except AttributeError:
            return False

    name, i = wanted, 0
    while taken(name):
        i += 1
        name = f"{wanted}_{i}"
    return name


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while building large data structures.

    The collector runs a full collection after enough container allocations; a captured
    graph keeps ~4·10⁵ objects alive (FX nodes, FakeTensors, sympy sizes), so one costs
    0.2-0.3 s, and a capture or a pruning pass allocates enough tuples and lists to trigger
    one (measured: once per ResNet-50 pruning). Paused, their allocations count as one young
    generation, so fewer full collections run later (six capture + prune + shape
    propagation rounds: 7 → 2 full collections, 1.3 → 0.5 s in the collector for ResNet-50,
    1.4 → 0.9 s for MobileNetV2). What the block allocates is kept or freed by reference
    counting; cyclic garbage it leaves is collected after the pause. Nests, and leaves the
    collector off if it was off. Mercurial's ``util.nogc`` does the same.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def drop_unused_attribute(gm: GraphModule, node: Node) -> None:
    """Erase a ``get_attr`` node nothing reads, and its tensor once no node reads it."""
    if node.users or node.op != "get_attr":
        return
    target = str(node.target)
    gm.graph.erase_node(node)
    if any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
        return
    owner_path, _, leaf = target.rpartition(".")
    owner = gm.get_submodule(owner_path) if owner_path else gm
    if hasattr(owner, leaf):
        delattr(owner, leaf)
