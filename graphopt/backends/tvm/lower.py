"""Lowering to TVM: torch.export with static shapes → plain-ATen QDQ → Relax → fused TIR.

1. ``export``: ``torch.export.export(..., strict=False)`` with the example's static shapes (TVM
   compiles per shape; the batch is the example's), then ``quantized_decomposed`` ops spelled
   in plain ATen (``QDQ_DECOMPOSITIONS``), because TVM's frontend has no converter for them.
2. ``to_relax``: ``from_exported_program`` with the parameters bound as constants, so
   ``FoldConstant`` can pre-compute weight transposes and the VM takes only the user's inputs.
3. ``prepare``: the lowering ``MetaScheduleTuneIRMod``'s pipeline uses (decompose BN for
   inference, legalize, fuse), so tuning tasks and the final module agree.

QDQ maths, as ``torch.ao.quantization.fx._decomposed`` defines the ops: quantize is
``clamp(round(x / s) + z, qmin, qmax)`` cast to the integer dtype (``round`` is half-to-even,
like ONNX's QuantizeLinear), dequantize is ``(q − z) · s`` in float32; per-channel variants
broadcast ``s`` and ``z`` along ``axis``. Other ops are left as they are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops
from torch import Tensor, nn
from torch.fx import GraphModule

from graphopt.backends.base import describe_model
from graphopt.errors import BackendError

__all__ = ["QDQ_DECOMPOSITIONS", "export", "prepare", "to_relax", "uses_qdq"]

_ops = torch.ops.quantized_decomposed


def export(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """Re-export with static shapes: TVM compiles one kernel set per input shape."""
    if not isinstance(model, nn.Module):
        raise BackendError(f"TVM compile needs a torch.nn.Module, got {type(model).__name__}")
    try:
        with torch.no_grad():
            program = torch.export.export(model, inputs, strict=False)
    except Exception as exc:
        raise BackendError(
            f"torch.export failed on {describe_model(model)} before TVM conversion: "
            f"{type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Check that the "
            "model runs eagerly on the example inputs (graphopt.capture.trace explains failures)"
        ) from exc
    return _decompose_qdq(program)


def to_relax(program: torch.export.ExportedProgram) -> Any:
    """The Relax module of ``program``, parameters bound as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(program, keep_params_as_input=False)
    except AssertionError as exc:
        # TVM reports unconverted ATen ops with an assert: "Unsupported function types [...]".
        message = str(exc)
        if "Unsupported function types" in message:
            ops = message.split("Unsupported function types", 1)[1].strip()
            raise BackendError(
                f"TVM's PyTorch frontend cannot convert these ops: {ops}. "
                "Rewrite them with supported ops, or use another backend (onnxruntime)"
            ) from exc
        raise BackendError(f"TVM's PyTorch frontend failed: {exc}") from exc
    except Exception as exc:
        raise BackendError(
            f"TVM's PyTorch frontend failed converting the exported program: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def prepare(tvm: Any, relax: Any, mod: Any, *, for_tuning: bool) -> Any:
    """The lowering that tuning and compiling share (what MetaScheduleTuneIRMod's pipeline runs).

    For tuning, weights are also marked layout-free, so MetaSchedule may choose a packed weight
    layout per conv/matmul (see ``graphopt.backends.tvm.tuning.apply_database``).
    """
    passes = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    if for_tuning:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    try:
        return tvm.transform.Sequential(passes)(mod)
    except Exception as exc:
        raise BackendError(f"TVM Relax lowering (legalize/fuse) failed: {exc}") from exc


def uses_qdq(gm: GraphModule) -> bool:
    """True when ``gm`` calls one of the ops ``QDQ_DECOMPOSITIONS`` spells in plain ATen."""
    return any(n.op == "call_function" and n.target in QDQ_DECOMPOSITIONS for n in gm.graph.nodes)


def _decompose_qdq(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Spell ``quantized_decomposed`` (QDQ) ops in plain ATen, which TVM's frontend converts."""
    if not uses_qdq(program.graph_module):
        return program
    return program.run_decompositions(QDQ_DECOMPOSITIONS)


# --- the QDQ ops in plain ATen (maths in the module docstring) ----------------------------


def _quantize_per_tensor(
    x: Tensor, scale: float, zero_point: int, qmin: int, qmax: int, dtype: torch.dtype
) -> Tensor:
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax).to(dtype)


def _dequantize_per_tensor(
    q: Tensor,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    dtype: torch.dtype,
    *,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    return ((q.to(torch.float32) - zero_point) * scale).to(out_dtype or torch.float32)


def _dequantize_per_channel(
    q: Tensor,
    scales: Tensor,
    zero_points: Tensor | None,
    axis: int,
    qmin: int,
    qmax: int,
    dtype: torch.dtype,
    *,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    shape = [-1 if d == axis % q.dim() else 1 for d in range(q.dim())]
    values = q.to(torch.float32)
    if zero_points is not None:
        values = values - zero_points.to(torch.float32).reshape(shape)
    return (values * scales.to(torch.float32).reshape(shape)).to(out_dtype or torch.float32)


QDQ_DECOMPOSITIONS = {
    _ops.quantize_per_tensor.default: _quantize_per_tensor,
    _ops.dequantize_per_tensor.default: _dequantize_per_tensor,
    _ops.dequantize_per_channel.default: _dequantize_per_channel,
}
