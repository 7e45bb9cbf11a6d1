"""Dynamic int8: int8 weights, activations quantized at run time, as ONNX Runtime computes it.

``scheme: dynamic`` of the ``quantize`` pass. Each quantized ``linear`` reads

- its weight as int8, per output channel, symmetric over [−127, 127] (``qparams.quantize_weight``,
  the same int8 buffer + ``dequantize_per_channel`` as the static scheme), and
- its input through ``graphopt::dynamic_quantize``, which computes what ONNX's
  ``DynamicQuantizeLinear`` followed by ``DequantizeLinear`` computes, per tensor, on every call::

      lo = min(0, min x)    hi = max(0, max x)         (the range always holds 0)
      s  = (hi − lo) / 255  z = clamp(round(−lo / s), 0, 255)
      x̂  = (clamp(round(x / s) + z, 0, 255) − z) · s   (round half to even, as ONNX and torch)

  with ``s = 1`` for an all-zero tensor (any scale is exact there). The range is the whole
  tensor's, batch included, as ORT's kernel takes it: the simulation matches ORT only when both
  see the same batch.

No calibration is needed: there are no activation ranges to fix in advance, which is why the
scheme holds fidelity on transformers where static int8 loses it (a LayerNorm output's range
changes with every sentence). ONNX Runtime multiplies uint8 activations by int8 weights with
integer kernels (``DynamicQuantizeMatMul``) and scales the int32 result by ``s · s_w`` in
float; the bias stays float.

ONNX form: inside ``torch.onnx.export`` the op's kernel writes ``DynamicQuantizeLinear →
DequantizeLinear`` (``torch.onnx.ops.symbolic``) instead of the simulation, and
``graphopt.backends.onnx_dynamic_int8`` rewrites ``DQ(dynamic) · DQ(int8 W)ᵀ`` into the
``DynamicQuantizeLinear → MatMulInteger → Cast → Mul(s · s_w)`` chain that ORT's own
``quantize_dynamic`` writes and that ORT fuses into ``DynamicQuantizeMatMul``. Everywhere else
(eager, shape propagation, ``torch.export``) the kernel is the simulation above, made of plain
ATen ops, so the graph stays runnable, traceable and saveable.

int8 embeddings (``embeddings: int8``; for both schemes): an ``aten.embedding`` table becomes an
int8 table with one symmetric scale per row, ``out = embedding(q, ids) · embedding(s, ids)`` —
in ONNX a ``Gather`` on the int8 rows and one on the float16 scales, two ``Cast`` and a
``Mul``: only the rows a sentence uses are dequantized (a ``DequantizeLinear`` of the whole
table before the ``Gather`` would turn 30 522 × 384 values back into float on every call, or
be folded by ORT into a float table, keeping the file's saving off the memory). Per row, not
per tensor (ORT's ``quantize_dynamic``): rare tokens' rows have small norms that one
table-wide scale would round coarsely.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from graphopt.ir import (
    drop_unused_attribute,
    fresh_attribute_name,
    get_tensor,
    is_op,
    module_path,
    set_tensor,
)
from graphopt.quant.placement import QuantLayer, _skipped, layer_type
from graphopt.quant.qparams import WEIGHT_QMAX
from graphopt.quant.quantizer import Converted
from graphopt.quant.rewrite import QUANT_META, quantize_weights

__all__ = [
    "DYNAMIC_QUANTIZE",
    "convert_dynamic",
    "dynamic_layers",
    "embedding_candidates",
    "int8_embeddings",
    "quantize_embeddings",
    "simulate_dynamic_quantize",
]

aten = torch.ops.aten

_LIBRARY = torch.library.Library("graphopt", "FRAGMENT")
_LIBRARY.define("dynamic_quantize(Tensor x) -> Tensor")


def simulate_dynamic_quantize(x: Tensor) -> Tensor:
    """``DequantizeLinear(DynamicQuantizeLinear(x))`` in torch (uint8, per tensor).

    With a straight-through gradient (``fq + (x − x)``: the value is ``fq`` exactly, the
    gradient 1), so fine-tuning through the op trains the layers before it too."""
    value = x.detach()
    lo = torch.clamp(torch.amin(value), max=0.0)
    hi = torch.clamp(torch.amax(value), min=0.0)
    scale = (hi - lo) / 255.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.clamp(torch.round(-lo / scale), 0.0, 255.0)
    q = torch.clamp(torch.round(value / scale) + zero, 0.0, 255.0)
    fake = (q - zero) * scale
    if not x.requires_grad:
        return fake
    return fake + (x - x.detach())


def _dynamic_quantize(x: Tensor) -> Tensor:
    if torch.onnx.is_in_onnx_export():
        q, scale, zero = torch.onnx.ops.symbolic_multi_out(
            "DynamicQuantizeLinear",
            [x],
            dtypes=[torch.uint8, torch.float32, torch.uint8],
            shapes=[x.shape, [], []],
            version=11,
        )
        return torch.onnx.ops.symbolic(
            "DequantizeLinear", [q, scale, zero], dtype=x.dtype, shape=x.shape, version=13
        )
    return simulate_dynamic_quantize(x)


# CompositeImplicitAutograd: the op is its Python body for every tracer (export, fake tensors),
# which is what lets the body choose the ONNX form while torch.onnx.export traces it.
_LIBRARY.impl("dynamic_quantize", _dynamic_quantize, "CompositeImplicitAutograd")
DYNAMIC_QUANTIZE = torch.ops.graphopt.dynamic_quantize.default


def dynamic_layers(
    layers: Sequence[QuantLayer], gm: GraphModule
) -> tuple[list[QuantLayer], list[tuple[str, str]]]:
    """The ``linear`` layers (ORT's MatMulInteger takes matrices); convs as refusals."""
    nodes = {n.name: n for n in gm.graph.nodes}
    kept, refused = [], []
    for layer in layers:
        if is_op(nodes[layer.node], [aten.linear]):
            kept.append(layer)
        else:
            refused.append((layer.node, "scheme dynamic quantizes linear layers only"))
    return kept, refused


def convert_dynamic(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    qparams: object = None,
    *,
    activation_ops: bool = True,
    weight_qmax: int = WEIGHT_QMAX,
) -> Converted:
    """A copy of ``gm`` with ``layers`` dynamic int8, weights over [−weight_qmax, weight_qmax]
    (the signature of ``quantizer.convert``, so the sensitivity search can use either;
    ``qparams`` and ``activation_ops`` are unused: the dynamic scheme has no calibrated ranges
    and quantizes nothing but the layers)."""
    del qparams, activation_ops
    with warnings.catch_warnings():  # torch's pytree deprecation noise on deepcopy
        warnings.filterwarnings("ignore", category=FutureWarning)
        out = copy.deepcopy(gm)
    weights = quantize_weights(out, layers, qmax=weight_qmax)
    nodes = {n.name: n for n in out.graph.nodes}
    quantized: dict[Node, Node] = {}  # one dynamic quantize per input tensor (Q, K, V share x)
    for layer in layers:
        node = nodes[layer.node]
        x = node.args[0]
        if x not in quantized:
            with out.graph.inserting_after(x):
                quantized[x] = out.graph.call_function(DYNAMIC_QUANTIZE, (x,))
            quantized[x].meta[QUANT_META] = "activation"
            if "val" in x.meta:
                quantized[x].meta["val"] = x.meta["val"]
        node.replace_input_with(x, quantized[x])
    out.graph.lint()
    out.recompile()
    return Converted(out, weights, len(quantized))


def embedding_candidates(
    gm: GraphModule, skip: Sequence[str] = ()
) -> tuple[list[Node], list[tuple[str, str]]]:
    """The ``aten.embedding`` nodes whose table can be int8, and the others with the reason.

    A table that anything besides embeddings reads (a tied LM head) stays float: its linear
    reads the float weight.
    """
    found, refused = [], []
    for node in gm.graph.nodes:
        if not is_op(node, [aten.embedding]) or node.meta.get(QUANT_META) == "embedding":
            continue
        table_node = node.args[0]
        table = get_tensor(gm, table_node)
        path = module_path(node)
        if _skipped(path, layer_type(node), skip):
            refused.append((node.name, f"skipped by option skip ({path})"))
        elif table is None or not table.is_floating_point() or table.dim() != 2:
            refused.append((node.name, "the table is not a 2-d float parameter"))
        elif any(not is_op(user, [aten.embedding]) for user in table_node.users):
            refused.append((node.name, "the table is shared with a non-embedding op"))
        else:
            found.append(node)
    return found, refused


def quantize_embeddings(gm: GraphModule, skip: Sequence[str] = ()) -> int:
    """Every ``embedding_candidates`` table as int8 rows with per-row scales, in place;
    returns the number of lookups rewritten."""
    nodes, _refused = embedding_candidates(gm, skip)
    for node in nodes:
        table_node = node.args[0]
        q, scales = quantize_rows(get_tensor(gm, table_node))
        _rewrite_embedding(gm, node, table_node, q, scales)
    gm.graph.lint()
    gm.recompile()
    return len(nodes)


def int8_embeddings(gm: GraphModule) -> int:
    """How many embedding lookups of ``gm`` read an int8 table."""
    return sum(
        1
        for n in gm.graph.nodes
        if is_op(n, [aten.embedding])
        and n.meta.get(QUANT_META) == "embedding"
        and getattr(get_tensor(gm, n.args[0]), "dtype", None) == torch.int8
    )


def quantize_rows(table: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per row: ``(q int8 (V, D), scales float16 (V, 1))``, all-zero rows s = 1.

    The scales are stored in float16 (a row's values are ``q · float(s)``, exactly): 61 kB
    instead of 122 kB for MiniLM's 30 522 rows, 2⁻¹¹ relative on a scale whose int8 step is
    already 2⁻⁷ of the row's largest value. Rounding the scale to float16 first and then the
    values to it keeps the formula exact; the clamp catches a scale rounded down.
    """
    table = table.detach().float()
    bound = table.abs().amax(1, keepdim=True)
    scales = torch.where(bound > 0, bound / WEIGHT_QMAX, torch.ones_like(bound))
    scales = scales.to(torch.float16).clamp(min=torch.finfo(torch.float16).tiny)
    q = torch.round(table / scales.float())
    return torch.clamp(q, -WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8), scales


def _rewrite_embedding(
    gm: GraphModule, node: Node, table_node: Node, q: Tensor, scales: Tensor
) -> None:
    base = str(table_node.target)
    names = {}
    for suffix, value in (("int8", q), ("row_scale", scales)):
        names[suffix] = fresh_attribute_name(gm, f"{base}_{suffix}")
        set_tensor(gm, names[suffix], value, parameter=False)
    ids = node.args[1]
    graph = gm.graph
    with graph.inserting_before(node):
        q_attr, s_attr = graph.get_attr(names["int8"]), graph.get_attr(names["row_scale"])
        rows = graph.call_function(aten.embedding.default, (q_attr, ids))
        row_scales = graph.call_function(aten.embedding.default, (s_attr, ids))
        dtype = {"dtype": torch.float32}
        floats = graph.call_function(aten._to_copy.default, (rows,), dtype)
        float_scales = graph.call_function(aten._to_copy.default, (row_scales,), dtype)
        out = graph.call_function(aten.mul.Tensor, (floats, float_scales))
    for new in (rows, row_scales, floats, float_scales, out):
        new.meta[QUANT_META] = "embedding"
    out.meta["val"] = node.meta.get("val")
    node.replace_all_uses_with(out)
    graph.erase_node(node)
    drop_unused_attribute(gm, table_node)
