"""Plain-ATen definitions of the ``quantized_decomposed`` QDQ ops, for backends without them.

The definitions follow ``torch.ao.quantization.fx._decomposed``: quantize is
``clamp(round(x / s) + z, qmin, qmax)`` cast to the integer dtype, dequantize is
``(q − z) · s`` in float32; per-channel variants broadcast ``s`` and ``z`` along ``axis``.
"""

from __future__ import annotations

import torch
import torch.ao.quantization.fx._decomposed  # registers the quantized_decomposed ops
from torch import Tensor
from torch.fx import GraphModule

__all__ = ["QDQ_DECOMPOSITIONS", "uses_qdq"]

_ops = torch.ops.quantized_decomposed


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


def uses_qdq(gm: GraphModule) -> bool:
    return any(n.op == "call_function" and n.target in QDQ_DECOMPOSITIONS for n in gm.graph.nodes)
