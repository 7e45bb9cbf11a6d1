"""The layers low-rank methods replace, the factor layers they become, and what both cost.

``read_layer`` turns an ``aten.linear`` / ``aten.conv2d`` node into a ``Layer`` (weights,
normalised conv arguments, per-sample sizes) or says why it cannot be decomposed.
``factor_stages`` gives the shapes of the replacement layers for a method and rank without
computing any factorisation, so rank choice, cost checks and MACs-budget searches are cheap;
``stage_cost`` counts their MACs and parameters the way ``graphopt.analysis`` does (per
sample, conv MACs = output elements × ``C_in/groups · k_h · k_w``, linear MACs = rows × in × out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.fx import GraphModule, Node
from torch.fx.operator_schemas import normalize_function

from graphopt.ir import get_tensor, is_op, module_path

__all__ = [
    "LINEAR_OR_CONV",
    "METHODS",
    "Layer",
    "Stage",
    "factor_stages",
    "read_layer",
    "stage_cost",
]

aten = torch.ops.aten
LINEAR_OR_CONV = (aten.linear, aten.conv2d)
METHODS = ("svd", "tucker", "cp", "spatial_svd", "pca")
Pair = tuple[int, int]


@dataclass(frozen=True)
class Layer:
    """A decomposable linear or conv2d node with its parameters and per-sample sizes.

    ``in_hw`` / ``out_hw`` are the conv's spatial sizes; for a linear layer ``rows`` is the
    number of feature vectors per sample (1 for ``(N, F)``, ``S`` for ``(N, S, F)``).
    """

    node: Node
    path: str
    kind: str  # "linear" | "conv"
    weight: Tensor
    bias: Tensor | None
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    in_hw: Pair = (1, 1)
    out_hw: Pair = (1, 1)
    rows: int = 1

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> Pair:
        return tuple(self.weight.shape[2:]) if self.kind == "conv" else (1, 1)

    @property
    def pointwise(self) -> bool:
        """A linear layer or a 1×1 conv: only the channel matrix to factor."""
        return self.kernel == (1, 1)

    def original_stage(self) -> Stage:
        return Stage(
            "original",
            self.kind,
            tuple(self.weight.shape),
            self.bias is not None,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
        )


@dataclass(frozen=True)
class Stage:
    """One layer of a replacement: its op, weight shape, bias flag and conv arguments."""

    name: str
    op: str  # "linear" | "conv"
    weight_shape: tuple[int, ...]
    bias: bool = False
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1


def read_layer(gm: GraphModule, node: Node) -> Layer | str:
    """The ``Layer`` behind ``node``, or the reason it cannot be decomposed."""
    path = module_path(node) or node.name
    if node.target is aten.conv2d.padding:
        return "conv2d with string padding ('same'/'valid') is not supported"
    kwargs = normalize_function(
        node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True
    ).kwargs
    weight_node, bias_node = kwargs["weight"], kwargs.get("bias")
    weight = get_tensor(gm, weight_node)
    if weight is None or not isinstance(kwargs["input"], Node):
        return "weight is not a parameter (computed or a graph input)"
    if bias_node is not None and get_tensor(gm, bias_node) is None:
        return "bias is not a parameter"
    for attr in (weight_node, bias_node):
        if attr is not None and _shared(gm, attr):
            return f"{attr.target} is shared with another layer; factoring it would add parameters"
    if not weight.is_floating_point():
        return f"weight dtype {weight.dtype} is not floating point"
    bias = get_tensor(gm, bias_node)
    out = node.meta.get("val")
    if not isinstance(out, Tensor):
        return "no output shape recorded (run shape propagation first)"
    if is_op(node, (aten.linear,)):
        rows = math.prod(_per_sample(d) for d in out.shape[1:-1]) if out.dim() > 1 else 1
        return Layer(node, path, "linear", weight, bias, rows=rows)
    inp = kwargs["input"].meta.get("val")
    if out.dim() != 4 or not isinstance(inp, Tensor):
        return "conv2d without a batched 4-D input and output"
    return Layer(
        node,
        path,
        "conv",
        weight,
        bias,
        stride=_pair(kwargs["stride"]),
        padding=_pair(kwargs["padding"]),
        dilation=_pair(kwargs["dilation"]),
        groups=int(kwargs["groups"]),
        in_hw=(_per_sample(inp.shape[2]), _per_sample(inp.shape[3])),
        out_hw=(_per_sample(out.shape[2]), _per_sample(out.shape[3])),
    )


def factor_stages(layer: Layer, method: str, rank: int | Pair) -> list[Stage]:
    """The replacement layers of ``layer`` for ``method`` at ``rank`` (shapes only)."""
    c_out, c_in = layer.out_channels, layer.in_channels
    bias = layer.bias is not None
    if method in ("svd", "pca"):
        last_bias = bias or method == "pca"  # PCA's restore bias carries the mean terms
        if layer.kind == "linear":
            return [
                Stage("project", "linear", (rank, c_in)),
                Stage("restore", "linear", (c_out, rank), last_bias),
            ]
        conv = (layer.stride, layer.padding, layer.dilation)
        return [
            Stage("project", "conv", (rank, c_in, *layer.kernel), False, *conv),
            Stage("restore", "conv", (c_out, rank, 1, 1), last_bias),
        ]
    (k_h, k_w), (s_h, s_w), (p_h, p_w), (d_h, d_w) = (
        layer.kernel,
        layer.stride,
        layer.padding,
        layer.dilation,
    )
    if method == "tucker":
        r_out, r_in = rank
        return [
            Stage("reduce", "conv", (r_in, c_in, 1, 1)),
            Stage("core", "conv", (r_out, r_in, k_h, k_w), False, *_conv_args(layer)),
            Stage("restore", "conv", (c_out, r_out, 1, 1), bias),
        ]
    if method == "cp":
        return [
            Stage("pointwise_in", "conv", (rank, c_in, 1, 1)),
            Stage("vertical", "conv", (rank, 1, k_h, 1), False, (s_h, 1), (p_h, 0), (d_h, 1), rank),
            Stage(
                "horizontal", "conv", (rank, 1, 1, k_w), False, (1, s_w), (0, p_w), (1, d_w), rank
            ),
            Stage("pointwise_out", "conv", (c_out, rank, 1, 1), bias),
        ]
    if method == "spatial_svd":
        return [
            Stage("vertical", "conv", (rank, c_in, k_h, 1), False, (s_h, 1), (p_h, 0), (d_h, 1)),
            Stage("horizontal", "conv", (c_out, rank, 1, k_w), bias, (1, s_w), (0, p_w), (1, d_w)),
        ]
    raise ValueError(f"unknown low-rank method {method!r}; known: {', '.join(METHODS)}")


def _conv_args(layer: Layer) -> tuple[Pair, Pair, Pair]:
    return layer.stride, layer.padding, layer.dilation


def stage_cost(layer: Layer, stages: list[Stage]) -> tuple[int, int]:
    """Per-sample (MACs, parameters) of ``stages`` run in order on ``layer``'s input."""
    macs = params = 0
    h, w = layer.in_hw
    for stage in stages:
        out_features = stage.weight_shape[0]
        params += math.prod(stage.weight_shape) + (out_features if stage.bias else 0)
        if stage.op == "linear":
            macs += layer.rows * math.prod(stage.weight_shape)
            continue
        k_h, k_w = stage.weight_shape[2:]
        h = _conv_out(h, k_h, stage.stride[0], stage.padding[0], stage.dilation[0])
        w = _conv_out(w, k_w, stage.stride[1], stage.padding[1], stage.dilation[1])
        macs += h * w * math.prod(stage.weight_shape)
    return macs, params


def _conv_out(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pair(value: object) -> Pair:
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    return (values[0], values[-1])


def _per_sample(dim: int | torch.SymInt) -> int:
    """A size with every symbol (the batch) set to 1, as ``graphopt.analysis`` counts."""
    if isinstance(dim, torch.SymInt):
        expr = dim.node.expr
        return int(expr.subs({s: 1 for s in expr.free_symbols}))
    return int(dim)


def _shared(gm: GraphModule, attr: Node) -> bool:
    """True when the tensor is read by another node or stored under another name too."""
    if len(attr.users) != 1:
        return True
    tensor = get_tensor(gm, attr)
    return any(
        n.op == "get_attr" and n is not attr and get_tensor(gm, n) is tensor for n in gm.graph.nodes
    )
