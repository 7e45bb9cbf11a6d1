"""Post-export lowering of graphopt's dynamic int8 (``quantize: {scheme: dynamic}``) for ORT.

The exporter writes a dynamic int8 linear as ``graphopt.quant.dynamic`` leaves it::

    x → DynamicQuantizeLinear → DequantizeLinear ─┐
    W_int8 → DequantizeLinear(axis 0) → Transpose ─┴→ MatMul (or Gemm, transB=1) → [Add bias]

which ORT 1.32 would run as written (a float MatMul on a weight dequantized on every call).
This rewrites each such product into the form ORT's own ``quantize_dynamic`` emits
(``onnxruntime/python/tools/quantization/operators/matmul.py``, ``MatMulInteger`` path)::

    x → DynamicQuantizeLinear → (x_q, s_x, z_x)
    MatMulInteger(x_q, Wᵀ_int8 [K, N], z_x, z_w [N]) → Cast(float) → Mul(·, Mul(s_x, s_w [N]))

that ORT's graph optimizer fuses (``MatMulIntegerToFloatFusion``, then
``DynamicQuantizeMatMulFusion``) into one ``com.microsoft.DynamicQuantizeMatMul`` per layer,
the bias ``Add`` included. The weight's zero points are all 0 (symmetric) and its scales per
output column: one scalar zero for ``MatMulInteger`` and a per-column scale vector in the
``Mul``, which both fused kernels take. Values are the same
as the unrewritten graph's up to float rounding of the int32 → float scaling.

Nothing else changes: a file without ``DynamicQuantizeLinear`` is left as it is (not even
re-written), so the hook is free for every other model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["lower_dynamic_int8"]


def lower_dynamic_int8(path: Path) -> int:
    """Rewrite ``path`` in place; returns the number of products lowered to MatMulInteger."""
    import onnx

    model = onnx.load(str(path))
    if not any(node.op_type == "DynamicQuantizeLinear" for node in model.graph.node):
        return 0
    count = _rewrite(model.graph)
    if count:
        onnx.save(model, str(path))
    return count


def _rewrite(graph: Any) -> int:
    from onnx import helper, numpy_helper

    producers = {out: node for node in graph.node for out in node.output}
    inits = {init.name: init for init in graph.initializer}
    new_nodes: dict[int, list[Any]] = {}  # index of a replaced node → its replacement
    count = 0
    for index, node in enumerate(graph.node):
        match = _match(node, producers, inits)
        if match is None:
            continue
        dynamic, weight = match
        q_w, s_w, z_w = (numpy_helper.to_array(inits[name]) for name in weight.input[:3])
        if np.any(z_w != 0):
            continue  # not graphopt's symmetric weight: leave it as exported
        stem = f"graphopt_dynamic_int8_{count}"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(q_w.T), f"{stem}_weight"),
                # Symmetric weights: one zero, not one per column (MatMulInteger's b_zero_point
                # may be a scalar; the per-column scales live in the Mul below).
                numpy_helper.from_array(np.zeros((), np.int8), f"{stem}_zero"),
                numpy_helper.from_array(s_w.astype(np.float32).reshape(-1), f"{stem}_scale"),
            ]
        )
        x_q, s_x, z_x = dynamic.output
        product = node.output[0] if node.op_type == "MatMul" else f"{stem}_product"
        chain = [
            helper.make_node(
                "MatMulInteger", [x_q, f"{stem}_weight", z_x, f"{stem}_zero"], [f"{stem}_i32"]
            ),
            helper.make_node("Cast", [f"{stem}_i32"], [f"{stem}_f32"], to=1),
            helper.make_node("Mul", [s_x, f"{stem}_scale"], [f"{stem}_scales"]),
            helper.make_node("Mul", [f"{stem}_f32", f"{stem}_scales"], [product]),
        ]
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            chain.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]]))
        elif node.op_type == "Gemm":
            chain[-1].output[0] = node.output[0]
        new_nodes[index] = chain
        count += 1
    if not count:
        return 0
    nodes = []
    for index, node in enumerate(graph.node):
        nodes.extend(new_nodes.get(index, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    _remove_dead(graph)
    return count


def _match(node: Any, producers: dict[str, Any], inits: dict[str, Any]) -> tuple[Any, Any] | None:
    """``(DynamicQuantizeLinear, weight DequantizeLinear)`` when ``node`` is a lowerable product."""
    if node.op_type == "MatMul":
        a, b = node.input
        weight = _transposed_weight(producers.get(b), producers, inits)
    elif node.op_type == "Gemm" and _plain_gemm(node):
        a, b = node.input[:2]
        weight = _weight(producers.get(b), inits)
    else:
        return None
    activation = producers.get(a)
    if weight is None or activation is None or activation.op_type != "DequantizeLinear":
        return None
    dynamic = producers.get(activation.input[0])
    if dynamic is None or dynamic.op_type != "DynamicQuantizeLinear":
        return None
    if list(activation.input[1:3]) != list(dynamic.output[1:3]):
        return None
    return dynamic, weight


def _transposed_weight(node: Any, producers: dict[str, Any], inits: dict[str, Any]) -> Any:
    if node is None or node.op_type != "Transpose":
        return None
    perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
    if perm != [1, 0]:
        return None
    return _weight(producers.get(node.input[0]), inits)


def _weight(node: Any, inits: dict[str, Any]) -> Any:
    """A per-output-channel (axis 0) DequantizeLinear of a 2-d int8 initializer."""
    if node is None or node.op_type != "DequantizeLinear" or len(node.input) < 3:
        return None
    if any(name not in inits for name in node.input[:3]):
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    weight, scale = inits[node.input[0]], inits[node.input[1]]
    if len(weight.dims) != 2 or weight.data_type != 3 or axis != 0:  # 3: INT8
        return None
    if list(scale.dims) != [weight.dims[0]]:
        return None
    return node


def _plain_gemm(node: Any) -> bool:
    attrs = {a.name: a for a in node.attribute}
    return (
        (attrs.get("alpha") is None or attrs["alpha"].f == 1.0)
        and (attrs.get("beta") is None or attrs["beta"].f == 1.0)
        and (attrs.get("transA") is None or attrs["transA"].i == 0)
        and attrs.get("transB") is not None
        and attrs["transB"].i == 1
    )


def _remove_dead(graph: Any) -> None:
    """Drop nodes and initializers nothing reads any more (the float weight path)."""
    outputs = {out.name for out in graph.output}
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in read for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for node in graph.node for name in node.input} | outputs
    for init in [init for init in graph.initializer if init.name not in read]:
        graph.initializer.remove(init)
