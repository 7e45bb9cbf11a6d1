"""Where quantize/dequantize pairs go: the patterns ONNX Runtime turns into int8 kernels.

ONNX Runtime's QDQ optimizer fuses ``DQ(x), DQ(W) → Conv → Q`` into ``QLinearConv`` (and the
same for Gemm/MatMul, Add, Concat, pooling), so a tensor is quantized once, right after the
op that produces it, and every reader takes the dequantized value — the quantized form
``quantize_static`` writes. The sites chosen here:

- **Weighted layers** (``conv1d``/``conv2d``, ``linear``): the input activation and the output.
  The weight is stored as int8 per output channel (``rewrite.py``); the bias stays float
  (ONNX Runtime quantizes it to int32 itself when it fuses).
- **Activation ops** (residual ``add``, ``cat``, ``matmul``/``bmm`` of two activations,
  average pooling and ``mean``): their inputs and output, for QLinearAdd/QLinearConcat/….
- An output read only by a ReLU / ReLU6 (``hardtanh``) / ``clamp`` is quantized after that
  activation instead: with uint8 and zero point 0 the clip is the quantizer's own, ONNX
  Runtime removes it and the conv writes uint8 directly.
- **Data movement** (``max_pool``, ``flatten``, ``view``/``reshape``, ``permute``/``transpose``,
  eval ``dropout``) of a quantized tensor: its output is quantized with its input's
  parameters. Values already on the grid stay on it, so the pair adds no error, and ONNX
  Runtime drops it and runs the op on int8.

Layers kept in float (skipped, refused, or chosen by mixed precision) read the float value of
their input. A site that no quantized op reads (a projection feeding float attention or
GELU) is dropped; the graph output counts as a reader, so a final conv/linear writes int8 as
ORT's QGemm needs. Anything else (softmax, layer norm, GELU, attention) computes in float on
dequantized inputs, as in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from graphopt.ir import get_tensor, is_op, module_path

__all__ = ["QuantLayer", "Sites", "find_layers", "find_sites", "layer_type"]

aten = torch.ops.aten
WEIGHTED = (aten.conv1d, aten.conv2d, aten.linear)
ACTIVATION_OPS = (
    aten.add,
    aten.cat,
    aten.matmul,
    aten.bmm,
    aten.adaptive_avg_pool2d,
    aten.avg_pool2d,
    aten.mean,
)
CLIPPING_ACTIVATIONS = (aten.relu, aten.hardtanh, aten.clamp, aten.relu6)
DATA_MOVEMENT = (
    aten.max_pool1d,
    aten.max_pool2d,
    aten.flatten,
    aten.view,
    aten.reshape,
    aten.permute,
    aten.transpose,
    aten.dropout,
    aten.contiguous,
)


@dataclass(frozen=True)
class QuantLayer:
    """A conv/linear whose weight can be stored as int8."""

    node: str
    path: str
    type: str
    weight: str  # the get_attr target of the weight


@dataclass(frozen=True)
class Sites:
    """Tensors (by node name) that get a QDQ pair; ``shared`` maps one to the tensor whose
    parameters it reuses; ``float_readers`` are the nodes that keep reading the float value
    (layers kept in float)."""

    own: tuple[str, ...]
    shared: dict[str, str]
    float_readers: frozenset[str]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.own, *self.shared)


def layer_type(node: Node) -> str:
    """Class name of the module that produced ``node`` ('' when unknown)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    _path, cls = list(stack.values())[-1]
    name = cls.__name__ if isinstance(cls, type) else str(cls)
    return name.rsplit(".", 1)[-1]


def find_layers(
    gm: GraphModule, skip: Sequence[str] = ()
) -> tuple[list[QuantLayer], list[tuple[str, str]]]:
    """Every conv/linear whose weight is a float parameter, minus ``skip`` (path or type);
    and the others as ``(node name, reason)``."""
    layers, refused = [], []
    for node in gm.graph.nodes:
        if not is_op(node, WEIGHTED):
            continue
        path, kind = module_path(node), layer_type(node)
        weight_node = node.args[1] if len(node.args) > 1 else None
        weight = get_tensor(gm, weight_node) if isinstance(weight_node, Node) else None
        if _skipped(path, kind, skip):
            refused.append((node.name, f"skipped by option skip ({path or kind})"))
        elif weight is None or not weight.is_floating_point():
            refused.append((node.name, "weight is not a float parameter or buffer"))
        else:
            layers.append(QuantLayer(node.name, path, kind, str(weight_node.target)))
    return layers, refused


def find_sites(
    gm: GraphModule,
    active: Collection[str],
    *,
    activation_ops: bool = True,
) -> Sites:
    """Sites for the weighted layers named in ``active`` (others stay float).

    One pass in graph order: an active layer makes its input and output sites; an activation
    op (add, cat, pool…) joins when one of its inputs is already a site, so ops fed only by
    float layers stay float (with every layer float, the graph is the float graph); data
    movement of a site shares its parameters. ``activation_ops=False`` leaves every
    activation op float (to measure one layer's sensitivity on its own).
    """
    weighted = {n.name for n in gm.graph.nodes if is_op(n, WEIGHTED)}
    float_layers = frozenset(weighted - set(active))
    own: dict[str, None] = {}
    shared: dict[str, str] = {}
    consumers = {n.name for n in gm.graph.nodes if n.op == "output"}

    def is_site(value: object) -> bool:
        return isinstance(value, Node) and (value.name in own or value.name in shared)

    for node in gm.graph.nodes:
        if node.name in active and is_op(node, WEIGHTED):
            new = [node.args[0], _through_clip(node)]
        elif activation_ops and _is_activation_op(node) and any(map(is_site, _tensor_args(node))):
            new = [*_tensor_args(node), _through_clip(node)]
        elif is_op(node, DATA_MOVEMENT) and node.args and is_site(node.args[0]):
            source = node.args[0].name
            shared[node.name] = shared.get(source, source)
            continue
        else:
            continue
        consumers.add(node.name)
        for value in new:
            if _is_float_tensor(value) and value.name not in shared:
                own[value.name] = None
    return _drop_unread(gm, own, shared, consumers, float_layers)


def _drop_unread(
    gm: GraphModule,
    own: dict[str, None],
    shared: dict[str, str],
    consumers: set[str],
    float_layers: frozenset[str],
) -> Sites:
    """Keep the sites that a quantized op (or the graph output) reads, through data movement.

    A layer output read only by float ops (attention, GELU, LayerNorm) would get a pair ONNX
    Runtime runs as two standalone ops, adding rounding for nothing. The graph output does
    count as a reader: ORT fuses a final Gemm into QGemm only when its output is quantized
    (as ``quantize_static`` does), and a float Gemm would dequantize its whole weight per call.
    """
    nodes = {n.name: n for n in gm.graph.nodes}

    def read(name: str) -> bool:
        return any(
            u.name in consumers or (u.name in shared and read(u.name)) for u in nodes[name].users
        )

    kept_own = tuple(name for name in own if read(name))
    kept_shared = {k: v for k, v in shared.items() if v in kept_own and read(k)}
    return Sites(kept_own, kept_shared, float_layers)


def _skipped(path: str, kind: str, skip: Sequence[str]) -> bool:
    return any(s in (kind, path) or path.startswith(s + ".") for s in skip)


def _is_activation_op(node: Node) -> bool:
    if not is_op(node, ACTIVATION_OPS):
        return False
    if is_op(node, (aten.add, aten.matmul, aten.bmm)):
        return len(_tensor_args(node)) == 2  # x + y of two activations, not x + constant
    return True


def _tensor_args(node: Node) -> list[Node]:
    args = node.args[0] if is_op(node, (aten.cat,)) else node.args
    return [a for a in args if _is_float_tensor(a)]


def _through_clip(node: Node) -> Node:
    """The node's output, or the ReLU/clip that is its only reader."""
    users = list(node.users)
    if len(users) == 1 and is_op(users[0], CLIPPING_ACTIVATIONS) and users[0].args[0] is node:
        return users[0]
    return node


def _is_float_tensor(value: object) -> bool:
    if not isinstance(value, Node) or value.op == "output":
        return False
    val = value.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()
