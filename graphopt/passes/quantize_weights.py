"""Weight-only block quantization of linear layers (int4/int8), run by ONNX Runtime as
``com.microsoft.MatMulNBits``.

Match → check → rewrite. Candidates are ``aten.linear`` nodes whose weight is a float
parameter read by that layer alone (``graphopt.sparsity.layers``: a tied embedding/head, a
weight another pass already computes, a layer in ``skip`` are refusals with the reason). HF
``Conv1D`` layers (GPT-2's ``addmm`` with an ``[in, out]`` weight) are first rewritten to
``aten.linear`` (``graphopt.weightonly.conv1d``) and quantized like the others. Each weight
``[N, K]`` is cut into blocks of ``block_size`` consecutive input features per output row,
and each block gets one scale (and zero point unless ``symmetric``) —
``graphopt.weightonly.blocks`` has the maths and the conventions, which are ONNX Runtime's
own. Methods:

- ``rtn``: round to nearest, no data;
- ``gptq``: GPTQ (Frantar et al. 2022, ``graphopt.weightonly.gptq``) from each layer's input
  Hessian ``2XᵀX`` on ``ctx.calibration`` (``graphopt.weightonly.calibration``): rounds the
  input columns in order and pushes each rounding error onto the columns not yet rounded, so
  the layer's *output* error on the data is minimised, not the weight error. GPTQ rather than
  AWQ: AWQ searches one scale per input channel for a grid of exponents, which needs a forward
  per candidate and a MatMulNBits-compatible way to fold the scales into the previous op; GPTQ
  changes only the codes, so the lowering is the same as RTN's.

The graph keeps the codes, scales and zero points as buffers and computes the dequantized
weight from them (``graphopt.weightonly.form``): torch runs exactly what ONNX Runtime runs,
and the ONNX export is rewritten to MatMulNBits by ``graphopt.backends.onnx_nbits``.
``accuracy_level`` is MatMulNBits' compute type (0/1: float32, which matches the torch graph to
float rounding; 4: activations quantized to int8 per block, faster on CPUs with VNNI).

Stats per layer: N, K, the relative weight error, for ``gptq`` the relative output error on
the calibration inputs (``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)``) of GPTQ and of RTN, and bytes float vs
packed. Approximate (``exact = False``); a second run refuses quantized layers (idempotent).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor
from torch.fx import GraphModule

from graphopt.data import input_batches
from graphopt.ir import get_tensor, iter_ops, module_path
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.sparsity.layers import check_names, find_weights
from graphopt.weightonly.blocks import BlockQuant, dequantize, quantize_rtn
from graphopt.weightonly.calibration import collect_hessians
from graphopt.weightonly.conv1d import linearize_conv1d
from graphopt.weightonly.form import find_quantized, write_quantized
from graphopt.weightonly.gptq import gptq_quantize

__all__ = ["QuantizeWeights"]

aten = torch.ops.aten


@register_pass
class QuantizeWeights(Pass):
    """Block-wise int4/int8 weight-only quantization of linears (RTN or GPTQ), for MatMulNBits."""

    name = "quantize_weights"
    exact = False

    class Options(Options):
        bits: Literal[4, 8] = Field(4, description="bits per weight code")
        block_size: int = Field(32, ge=16, description="input features per block (power of 2)")
        symmetric: bool = Field(False, description="fixed zero point 2^(bits-1), no zeros stored")
        method: Literal["rtn", "gptq"] = Field("rtn", description="rtn (no data) or gptq")
        damping: float = Field(0.01, gt=0, le=1, description="GPTQ: λ of H + λ·mean(diag H)·I")
        calibration_batches: int | None = Field(
            None, ge=1, description="GPTQ: calibration batches used (None: all)"
        )
        accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
            4, description="MatMulNBits compute: 0/1 float32, 4 int8 activations"
        )
        skip: Names = Field((), description="module paths left float")

        @field_validator("block_size")
        @classmethod
        def _power_of_two(cls, value: int) -> int:
            if value & (value - 1):
                raise ValueError(f"must be a power of two ≥ 16 such as 32 or 128, got {value}")
            return value

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        check_names(gm, self.name, "skip", self.skip, extra_ops=(aten.addmm,))
        if self.method == "gptq":
            ctx.require(self.name, "calibration", purpose="GPTQ's input Hessians")

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        linearized = linearize_conv1d(gm, self.skip)
        refs, refused = find_weights(gm, self.skip)
        done = {q.node.name for q in find_quantized(gm)}
        refused = [_already(r, done, gm) for r in refused]
        refused += [
            Refusal(
                module_path(n) or n.name,
                "addmm (HF Conv1D) with a shared weight, beta/alpha ≠ 1 or in skip: left float",
            )
            for n in iter_ops(gm, (aten.addmm,))
            if get_tensor(gm, n.args[2] if len(n.args) > 2 else None) is not None
        ]
        nodes = {n.name: n for n in gm.graph.nodes}
        linears = [nodes[r.node] for r in refs if r.kind == "linear"]
        hessians = self._hessians(gm, ctx, linears)
        rows = []
        for layer in linears:
            weight = get_tensor(gm, layer.args[1]).detach().float()
            rtn = quantize_rtn(weight, self.bits, self.block_size, self.symmetric)
            quant, row = rtn, {}
            if self.method == "gptq" and layer in hessians:
                h = hessians[layer]
                quant = gptq_quantize(
                    weight,
                    h,
                    bits=self.bits,
                    block_size=self.block_size,
                    symmetric=self.symmetric,
                    damping=self.damping,
                )
                row = {
                    "output_error": _output_error(weight, quant, h),
                    "output_error_rtn": _output_error(weight, rtn, h),
                }
            info = {
                "bits": self.bits,
                "block_size": self.block_size,
                "symmetric": self.symmetric,
                "method": self.method if row or self.method == "rtn" else "rtn",
                "accuracy_level": self.accuracy_level,
            }
            write_quantized(gm, layer, quant, info)
            rows.append(_row(module_path(layer) or layer.name, weight, quant, info) | row)
        float_bytes = sum(r["bytes_float"] for r in rows)
        packed = sum(r["bytes_packed"] for r in rows)
        stats: dict[str, Any] = {
            "bits": self.bits,
            "block_size": self.block_size,
            "symmetric": self.symmetric,
            "method": self.method,
            "quantized": len(rows),
            "conv1d_as_linear": len(linearized),
            "bytes_float": float_bytes,
            "bytes_packed": packed,
            "size_ratio": float_bytes / packed if packed else 1.0,
            "layers": rows,
        }
        return PassResult(gm, modified=bool(rows), stats=stats, refusals=tuple(refused))

    def _hessians(
        self, gm: GraphModule, ctx: PassContext, linears: list[torch.fx.Node]
    ) -> dict[torch.fx.Node, Tensor]:
        if self.method != "gptq" or not linears:
            return {}
        batches = input_batches(ctx.calibration, graph=gm)
        if self.calibration_batches is not None:
            batches = itertools.islice(batches, self.calibration_batches)
        return collect_hessians(gm, linears, batches)


def _already(refusal: Refusal, done: set[str], gm: GraphModule) -> Refusal:
    """Name the reason of a refused layer that this pass quantized before."""
    for node in gm.graph.nodes:
        if node.name in done and (module_path(node) or node.name) == refusal.node:
            return Refusal(refusal.node, "already quantized (weight-only)")
    return refusal


def _output_error(weight: Tensor, quant: BlockQuant, hessian: Tensor) -> float:
    """``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``: the relative squared output error on the calibration data."""
    w, h = weight.double(), hessian.double()
    delta = dequantize(quant).double() - w
    base = float(torch.einsum("nk,kl,nl->", w, h, w))
    return float(torch.einsum("nk,kl,nl->", delta, h, delta)) / base if base > 0 else 0.0


def _row(where: str, weight: Tensor, quant: BlockQuant, info: dict[str, Any]) -> dict[str, Any]:
    n, k = weight.shape
    blocks = quant.codes.shape[1]
    packed = n * blocks * quant.block_size * quant.bits // 8 + 4 * n * blocks
    if quant.zeros is not None:
        packed += n * ((blocks * quant.bits + 7) // 8)
    norm = float(weight.double().norm())
    error = float((dequantize(quant).double() - weight.double()).norm()) / norm if norm else 0.0
    return {
        "layer": where,
        "n": int(n),
        "k": int(k),
        "method": info["method"],
        "weight_error": error,
        "bytes_float": int(n * k * 4),
        "bytes_packed": int(packed),
    }
