"""Quantization parameters: the affine map ``q = clamp(round(x / s) + z, qmin, qmax)``.

Activations are per tensor. ``uint8`` (the default) is asymmetric: the observed range is
widened to contain 0 (so zero padding and ReLU's zeros are exact), ``s = (hi − lo) / 255`` and
``z = round(−lo / s)``; a ReLU output then gets ``z = 0`` and ONNX Runtime drops the ReLU, fusing
Conv → ReLU → Q into one QLinearConv. ``int8`` activations are symmetric (``z = 0``,
``s = max(|lo|, |hi|) / 127``): ONNX Runtime 1.32 on x86 runs a third of ResNet's convs and
all residual adds in float with them (measured; see ``benchmarks/RESULTS.md``), which is why
uint8 is the default.

Weights are per output channel, symmetric int8 over [−127, 127] (``s_c = max|W_c| / 127``):
the restricted range keeps the int8 × uint8 products of VNNI kernels from saturating, and
symmetric weights make the zero point vanish from the integer accumulation. On x86 CPUs
without VNNI the range is [−64, 64] (``qmax``; ``graphopt.quant.weight_range`` says why). A
channel's scale is raised when its bias would not fit ORT's int32 bias otherwise
(``quantize_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "ACTIVATION_DTYPES",
    "INT32_BIAS_LIMIT",
    "WEIGHT_QMAX",
    "ActivationQParams",
    "activation_qparams",
    "quantize_weight",
]

WEIGHT_QMAX = 127
INT32_BIAS_LIMIT = float(2**30)  # |int32 bias| ORT may compute, with room for the accumulation
_TINY = float(torch.finfo(torch.float32).tiny) * 2**20  # smallest range treated as non-zero

ACTIVATION_DTYPES = {"uint8": (torch.uint8, 0, 255), "int8": (torch.int8, -128, 127)}


@dataclass(frozen=True)
class ActivationQParams:
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    dtype: torch.dtype

    def args(self) -> tuple[float, int, int, int, torch.dtype]:
        """The trailing arguments of ``quantized_decomposed.(de)quantize_per_tensor``."""
        return (self.scale, self.zero_point, self.qmin, self.qmax, self.dtype)

    def to_dict(self) -> dict[str, object]:
        return {
            "scale": self.scale,
            "zero_point": self.zero_point,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def activation_qparams(lo: float, hi: float, dtype: str = "uint8") -> ActivationQParams:
    """Scale and zero point covering ``[lo, hi]`` (widened to contain 0)."""
    torch_dtype, qmin, qmax = ACTIVATION_DTYPES[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= _TINY:  # constant zero: any scale is exact; 1 keeps ORT's int32 bias finite
        zero = 0 if dtype == "int8" else qmin
        return ActivationQParams(1.0, zero, qmin, qmax, torch_dtype)
    if dtype == "int8":
        bound = max(-lo, hi)
        return ActivationQParams(_float32(max(bound / 127.0, _TINY)), 0, qmin, qmax, torch_dtype)
    scale = _float32(max((hi - lo) / (qmax - qmin), _TINY))
    zero_point = int(min(max(round(-lo / scale) + qmin, qmin), qmax))
    return ActivationQParams(scale, zero_point, qmin, qmax, torch_dtype)


def _float32(value: float) -> float:
    """``value`` rounded to float32, the precision the ONNX file stores scales in."""
    return float(torch.tensor(value, dtype=torch.float32))


def quantize_weight(
    weight: Tensor,
    axis: int = 0,
    *,
    bias: Tensor | None = None,
    input_scale: float | None = None,
    qmax: int = WEIGHT_QMAX,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel symmetric int8 over [−qmax, qmax]: ``(q int8, scales float32, zero_points
    int64)``.

    With the layer's float ``bias`` and its input's activation ``input_scale``, each channel's
    scale is raised where needed so that ONNX Runtime's int32 bias ``round(b_c / (s_x · s_c))``
    stays within ±2³⁰ (half the int32 range, the rest left to the accumulation), as ORT's own
    quantizer adjusts weight scales for int32 biases. Without it an input whose range is
    nearly zero (seen: 1.8e-15, a random-init EfficientNet's pooled features) makes QGemm
    overflow the bias and output zeros, while the QDQ graph in torch is right. Such a channel
    then holds coarser (or zero) weights, which changes nothing there: its input is ~0.
    """
    moved = weight.detach().float().movedim(axis, 0)
    bound = moved.reshape(moved.shape[0], -1).abs().amax(1)
    # An all-zero channel gets scale 1 (exact for zeros), as ORT's quantizer does: a tiny scale
    # would make ORT's int32 bias (bias / (s_x · s_w)) overflow.
    scales = torch.where(bound > 0, torch.clamp(bound / qmax, min=_TINY), 1.0)
    if bias is not None and input_scale is not None and bias.numel() == scales.numel():
        floor = bias.detach().float().abs().reshape(-1) / (input_scale * INT32_BIAS_LIMIT)
        scales = torch.maximum(scales, floor)
    shape = [-1] + [1] * (moved.dim() - 1)
    q = torch.clamp(torch.round(moved / scales.view(shape)), -qmax, qmax)
    return (
        q.to(torch.int8).movedim(0, axis).contiguous(),
        scales,
        torch.zeros_like(scales, dtype=torch.int64),
    )
