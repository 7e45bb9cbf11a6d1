"""Lower weight-only quantized linears in an exported ONNX file to ``com.microsoft.MatMulNBits``.

The dynamo exporter writes a ``quantize_weights`` layer (``graphopt.weightonly.form``) as
``MatMul(A, Transpose(Reshape(Mul(Sub(Cast(codes), zeros), scales))))`` (+ ``Add(bias)``), or
``Gemm`` for 2-d inputs; ONNX Runtime would constant-fold that into a float weight and run a
float MatMul. This pass replaces each such MatMul/Gemm (and its bias Add) by one
``MatMulNBits`` node (ORT contrib op, opset ``com.microsoft`` 1):

- attributes ``K``, ``N``, ``bits``, ``block_size``, ``accuracy_level`` (the pass's option;
  0/1 compute in float32, 4 quantizes A to int8 per block);
- inputs ``A``; ``B`` uint8 ``[N, n_blocks, block_size·bits/8]``; ``scales`` float
  ``[N·n_blocks]``; ``zero_points`` uint8 ``[N, ⌈n_blocks·bits/8⌉]`` (absent when symmetric:
  ORT then uses ``2^(bits−1)``); ``g_idx`` (absent); ``bias`` ``[N]``.

Which MatMul is which layer is found by *value*, not by name: the exporter's names change
with its version, and its optimizer constant-folds small chains (fewer than 8192 elements)
into one float initializer. So every quantized layer of the torch module (found by
``graphopt.weightonly.find_quantized``) is keyed by the sha1 of its uint8 codes and of its
dequantized weight (both orientations), and a MatMul/Gemm whose weight operand is, or is
computed only from, one of those initializers is that layer. The packed tensors are written
from the module's codes by ``graphopt.weightonly.pack_codes`` (the layout is checked against
ORT's own ``quantize_matmul_4bits`` in ``tests/quant/test_int4.py``; that routine cannot be
used here, as it computes RTN codes itself and GPTQ's differ).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from graphopt.weightonly import find_quantized, pack_codes
from graphopt.weightonly.form import QuantizedLinear

__all__ = ["lower_weight_only"]

_DOMAIN = "com.microsoft"
_CHAIN_OPS = {"Transpose", "Reshape", "Slice", "Mul", "Sub", "Cast", "Identity", "Flatten"}
_MAX_CHAIN = 12


@dataclass(frozen=True)
class _Target:
    layer: QuantizedLinear
    n: int
    k: int
    orientation: str  # how the matched initializer holds it: "codes", "w" ([N, K]) or "wt"


def lower_weight_only(model: torch.nn.Module, path: Path) -> int:
    """Rewrite ``path`` in place; return the number of MatMulNBits nodes written.

    A module without quantized layers returns 0 without reading the file. Layers that are
    in the module (and feed its output) but not found in the file stay float, with a warning
    naming them.
    """
    layers = find_quantized(model)
    if not layers:
        return 0
    live = _live_nodes(model)
    layers = [q for q in layers if q.node in live]
    if not layers:
        return 0
    import onnx_ir as ir

    keys = _keys(layers)
    ir_model = ir.load(str(path))
    graph = ir_model.graph
    done: set[int] = set()
    written = 0
    for node in list(graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("MatMul", "Gemm"):
            continue
        target = _match(node, keys)
        if target is None or id(target.layer) in done:
            continue
        if _replace(ir, graph, node, target):
            done.add(id(target.layer))
            written += 1
    if written:
        ir_model.opset_imports.setdefault(_DOMAIN, 1)
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(ir_model)
        _save(ir, ir_model, path)
    missed = [q.where for q in layers if id(q) not in done]
    if missed:
        warnings.warn(
            f"onnxruntime: {len(missed)} weight-only quantized layer(s) stay float MatMul in "
            f"the ONNX file (no matching MatMul/Gemm found): {', '.join(missed[:5])}",
            stacklevel=3,
        )
    return written


def _live_nodes(gm: torch.nn.Module) -> set[object]:
    """FX nodes the output depends on (the exporter drops the others, e.g. an unused pooler)."""
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    live, stack = set(), list(outputs)
    while stack:
        node = stack.pop()
        if node not in live:
            live.add(node)
            stack.extend(node.all_input_nodes)
    return live


def _digest(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    head = f"{array.dtype.str}{array.shape}".encode()
    return hashlib.sha1(head + array.tobytes()).hexdigest()


def _keys(layers: list[QuantizedLinear]) -> dict[str, _Target]:
    keys: dict[str, _Target] = {}
    for layer in layers:
        weight = layer.weight().detach().numpy().astype(np.float32)
        n, k = weight.shape
        keys[_digest(layer.quant.codes.numpy())] = _Target(layer, n, k, "codes")
        keys[_digest(weight)] = _Target(layer, n, k, "w")
        keys[_digest(weight.T)] = _Target(layer, n, k, "wt")
    return keys


def _match(node: object, keys: dict[str, _Target]) -> _Target | None:
    """The layer whose codes (or folded weight) the node's weight operand is computed from."""
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if weight is None:
        return None
    if node.op_type == "Gemm":
        attrs = {name: attr.value for name, attr in node.attributes.items()}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        if len(node.inputs) > 2 and node.inputs[2] is not None and attrs.get("beta", 1.0) != 1.0:
            return None
        wanted_folded = "w" if attrs.get("transB", 0) else "wt"
    else:
        wanted_folded = "wt"
    if weight.const_value is not None:  # the whole chain was folded into this initializer
        target = keys.get(_digest(weight.const_value.numpy()))
        return target if target is not None and target.orientation == wanted_folded else None
    for initializer in _chain_initializers(weight):
        target = keys.get(_digest(initializer.const_value.numpy()))
        if target is not None and target.orientation == "codes":
            return target
    return None


def _chain_initializers(value: object) -> list[object]:
    """Initializers reached backwards from ``value`` through dequantization-like ops only."""
    found, frontier, seen = [], [value], 0
    while frontier and seen < _MAX_CHAIN:
        current = frontier.pop()
        if current is None:
            continue
        if current.const_value is not None:
            if current.dtype is not None and current.dtype.name == "UINT8":
                found.append(current)
            continue
        producer = current.producer()
        if producer is None or producer.op_type not in _CHAIN_OPS:
            continue
        seen += 1
        frontier.extend(producer.inputs)
    return found


def _replace(ir: object, graph: object, node: object, target: _Target) -> bool:
    """Put a MatMulNBits node in place of ``node`` (and the bias Add after it)."""
    a = node.inputs[0]
    bias, last = None, node
    if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        if not _is_vector(bias, target.n):
            return False
    elif node.op_type == "MatMul":
        bias, last = _bias_add(node, target.n)
    quant = target.layer.quant
    packed, scales, zeros = pack_codes(quant)
    stem = target.layer.codes
    inputs = [
        a,
        _initializer(ir, graph, f"{stem}_nbits_B", packed.numpy()),
        _initializer(ir, graph, f"{stem}_nbits_scales", scales.numpy()),
        _initializer(ir, graph, f"{stem}_nbits_zero_points", zeros.numpy())
        if zeros is not None
        else None,
    ]
    if bias is not None:
        inputs += [None, bias]
    level = int(target.layer.info.get("accuracy_level", 4))
    attributes = ir.convenience.convert_attributes(
        {
            "K": target.k,
            "N": target.n,
            "bits": quant.bits,
            "block_size": quant.block_size,
            "accuracy_level": level,
        }
    )
    old = last.outputs[0]
    new = ir.Node(_DOMAIN, "MatMulNBits", inputs, attributes, num_outputs=1, version=1)
    graph.insert_before(node, new)
    out = new.outputs[0]
    out.shape, out.type = old.shape, old.type
    old.replace_all_uses_with(out, replace_graph_outputs=True)
    name = old.name
    graph.remove([last, node] if last is not node else [node], safe=True)
    out.name = name
    return True


def _bias_add(node: object, n: int) -> tuple[object | None, object]:
    """The bias of ``MatMul → Add(bias [N])`` when the Add is the MatMul's only use."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output():
        return None, node
    add = uses[0].node
    if add.op_type != "Add" or add.domain not in ("", "ai.onnx") or len(add.inputs) != 2:
        return None, node
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    if other is None or not _is_vector(other, n):
        return None, node
    return other, add


def _is_vector(value: object, n: int) -> bool:
    const = value.const_value
    return const is not None and tuple(const.shape) == (n,) and const.dtype.name == "FLOAT"


def _initializer(ir: object, graph: object, name: str, array: np.ndarray) -> object:
    while name in graph.initializers:
        name += "_"
    tensor = ir.tensor(np.ascontiguousarray(array), name=name)
    value = ir.Value(
        name=name, shape=tensor.shape, type=ir.TensorType(tensor.dtype), const_value=tensor
    )
    graph.register_initializer(value)
    return value


def _save(ir: object, model: object, path: Path) -> None:
    """Write next to ``path`` and move into place (the source may be memory-mapped)."""
    external = any(
        isinstance(value.const_value, ir.ExternalTensor)
        for value in model.graph.initializers.values()
    )
    tmp = path.with_name(path.name + ".nbits.tmp")
    data = f"{path.name}.nbits.data" if external else None
    ir.save(model, str(tmp), external_data=data)
    os.replace(tmp, path)
