"""Quantization: int8 QDQ that ONNX Runtime runs with int8 kernels, or fp16 weight storage.

``scheme``:

- ``int8``: every conv/linear (not skipped) gets per-channel symmetric int8 weights, and the
  activations around it (and around residual adds, concats and pools) per-tensor quantize /
  dequantize pairs with ranges calibrated on data (``graphopt.quant.placement`` says where
  and why; ``graphopt.quant.qparams`` the maths). Activations are ``uint8`` by default
  (asymmetric; ``activations: int8`` for symmetric) — the choice that turns every conv and add
  of ResNet into ONNX Runtime's QLinearConv/QLinearAdd.
- ``mixed``: as int8, but the most sensitive layers stay float until the output cosine
  against the float graph reaches ``min_cosine`` (``graphopt.quant.sensitivity``).
- ``fp16``: float16 weight storage, float32 compute (``graphopt.quant.fp16``).
- ``dynamic``: int8 weights per output channel, activations quantized at run time per tensor
  (uint8, as ONNX's ``DynamicQuantizeLinear``): ORT runs each linear as
  ``DynamicQuantizeMatMul`` (``graphopt.quant.dynamic`` says how, and why it needs no
  calibration). Linear layers only (convs stay float, with the reason).
- ``dynamic_mixed``: as dynamic, with the most sensitive layers kept float until the output
  cosine reaches ``min_cosine``, by the same search as ``mixed``.

``weight_range``: int8 weights over [−127, 127] (``full``) or [−64, 64] (``reduced``, ORT's
``reduce_range``), which x86 CPUs without VNNI need for exact results: their int8 kernels add
pairs of products into a saturating int16 (``graphopt.quant.weight_range``). ``auto`` (the
default) chooses by this machine's CPU; the stats say which range and why.

``embeddings``: ``int8`` stores every ``aten.embedding`` table as int8 rows with per-row
scales (the word table is half of a small BERT's file); ``auto`` (the default) does so for the
dynamic schemes and keeps the static ones' tables float.

Calibration data is required for int8 and mixed (the dynamic schemes score their result on it
when there is some, else on the example inputs): ``ctx.calibration`` (an iterable
of input tuples, e.g. from the recipe's ``data:``), cut at ``calibration["samples"]``; or the
example inputs with ``calibration: {source: example_inputs}``. Observers: ``minmax``,
``moving_average``, ``percentile``, ``entropy``, ``mse`` (``graphopt.quant.observers``).

Before placing pairs the pass folds BatchNorm into the preceding conv/linear (a BN between
them would stop ONNX Runtime's fusion) and makes in-place activations functional.

The result is the deployable QDQ graph (int8 weights as buffers, so the model size counts
them as one byte). ``graphopt.quant.qat.to_trainable`` turns it into a fake-quantized,
trainable graph for quantization-aware training; the ``recover`` pass does that itself.

Stats: the output cosine and top-1 agreement against the float graph on the first
``sensitivity_samples`` calibration samples, layers in int8 and in float (with the reason),
QDQ pairs, and — for ``mixed``, or with ``sensitivity: true`` — the per-layer sensitivity
table.
"""

from __future__ import annotations

import functools
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field
from torch import Tensor
from torch.fx import GraphModule

from graphopt.data import input_batches
from graphopt.errors import PassError
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.passes.fold_batchnorm import FoldBatchNorm
from graphopt.quant.calibrate import take_samples
from graphopt.quant.dynamic import (
    convert_dynamic,
    dynamic_layers,
    embedding_candidates,
    int8_embeddings,
    quantize_embeddings,
)
from graphopt.quant.fp16 import store_weights_fp16
from graphopt.quant.functionalize import functionalize_inplace
from graphopt.quant.observers import OBSERVERS
from graphopt.quant.placement import find_layers
from graphopt.quant.qat import is_quantized
from graphopt.quant.qparams import ACTIVATION_DTYPES
from graphopt.quant.quantizer import Converted, agreement, calibrate, convert, run_batches
from graphopt.quant.sensitivity import choose_float_layers, layer_sensitivity
from graphopt.quant.weight_range import WEIGHT_RANGES, resolve_weight_range

__all__ = ["Quantize"]

SCHEMES = ("int8", "mixed", "fp16", "dynamic", "dynamic_mixed")
DYNAMIC = ("dynamic", "dynamic_mixed")
EMBEDDINGS = ("auto", "int8", "float")
_SOURCES = ("data", "example_inputs")


class CalibrationOptions(Options):
    """``calibration: {samples: 128, source: data}`` — how many samples, from where."""

    samples: int = Field(128, ge=1, description="calibration samples")
    source: Literal[_SOURCES] = Field("data", description="data (the task's) or example_inputs")


@register_pass
class Quantize(Pass):
    """Quantize: int8 weights and calibrated activations (QDQ), mixed precision, or fp16."""

    name = "quantize"
    exact = False

    class Options(Options):
        scheme: Literal[SCHEMES] = Field(
            "int8",
            description="int8, mixed (some float), fp16, dynamic (run-time activation "
            "ranges), dynamic_mixed",
        )
        weight_range: Literal[WEIGHT_RANGES] = Field(
            "auto",
            description="int8 weights: full [-127, 127], reduced [-64, 64] (x86 without VNNI "
            "saturates full ones), auto: by this CPU",
        )
        embeddings: Literal[EMBEDDINGS] = Field(
            "auto", description="int8 embedding tables (auto: with the dynamic schemes)"
        )
        activations: Literal[tuple(sorted(ACTIVATION_DTYPES))] = Field(
            "uint8", description="activation dtype (uint8: ORT's U8S8 kernels)"
        )
        observer: Literal[tuple(sorted(OBSERVERS))] = Field(
            "minmax", description="how calibration ranges are chosen"
        )
        percentile: float = Field(99.99, gt=50, le=100, description="for observer: percentile")
        calibration: CalibrationOptions = Field(
            default_factory=lambda: CalibrationOptions(), description="samples and source"
        )
        skip: Names = Field((), description="module paths, path prefixes or types left float")
        min_cosine: float = Field(0.999, gt=0, le=1, description="scheme mixed: output cosine")
        sensitivity: bool = Field(False, description="measure per-layer int8 sensitivity")
        sensitivity_samples: int = Field(32, ge=1, description="samples for sensitivity")
        progress: bool = Field(True, description="show calibration progress")

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.scheme in ("fp16", *DYNAMIC) or self.calibration.source == "example_inputs":
            return
        ctx.require(
            self.name,
            "calibration",
            purpose=f"scheme {self.scheme!r} (or calibration: {{source: example_inputs}})",
        )

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        if is_quantized(gm):
            refusal = Refusal("graph", "already quantized (it has quantize/dequantize nodes)")
            return PassResult(gm, modified=False, stats={"refused": [asdict(refusal)]})
        if self.scheme == "fp16":
            count = store_weights_fp16(gm)
            return PassResult(gm, modified=count > 0, stats={"scheme": "fp16", "fp16": count})
        folded = FoldBatchNorm().call(gm, ctx).stats.get("folded", 0)
        functional, _kept = functionalize_inplace(gm)
        gm.graph.lint()
        gm.recompile()
        layers, not_quantizable = find_layers(gm, self.skip)
        refused = [Refusal(node, reason) for node, reason in not_quantizable]
        if self.scheme in DYNAMIC:
            return self._dynamic(gm, ctx, layers, refused, folded, functional)
        batches = self._batches(ctx)
        probe = list(take_samples(batches, self.sensitivity_samples))
        calibration = calibrate(
            gm,
            layers,
            batches,
            observer=self.observer,
            activations=self.activations,
            percentile=self.percentile,
            progress=self.progress,
            reference_batches=_leading_same(probe, batches),
        )
        qparams = calibration.qparams
        reference = run_batches(gm, probe, known=calibration.reference)
        to_int8 = functools.partial(convert, weight_qmax=self._weight_qmax)
        table = (
            layer_sensitivity(gm, layers, qparams, probe, convert_fn=to_int8, reference=reference)
            if self.scheme == "mixed" or self.sensitivity
            else []
        )
        stats: dict[str, Any] = {"scheme": self.scheme, **self._weight_range_stats}
        if self.scheme == "mixed":
            choice = choose_float_layers(
                gm,
                layers,
                qparams,
                table,
                probe,
                min_cosine=self.min_cosine,
                convert_fn=to_int8,
                reference=reference,
            )
            converted, score = choice.converted, choice.agreement
            for layer in choice.float_layers:
                refused.append(Refusal(layer.node, "kept in float by mixed precision"))
            stats |= {"min_cosine": self.min_cosine, "budget_met": choice.met}
            stats["mixed_evaluations"] = choice.evaluations
        else:
            converted = to_int8(gm, layers, qparams)
            score = agreement(reference, run_batches(converted.graph_module, probe))
        tables = self._embeddings(converted.graph_module, refused)
        stats |= {
            "embeddings_int8": tables,
            "activations": self.activations,
            "observer": self.observer,
            "layers_int8": converted.weights,
            "activation_pairs": converted.activation_pairs,
            "layers_float": len(refused),
            "calibration_samples": sum(b[0].shape[0] for b in batches),
            "cosine": score.cosine,
            "top1_agreement": score.top1_agreement,
            "folded_batchnorm": folded,
            "functionalized": functional,
            "sensitivity": table,
            "refused": [asdict(r) for r in refused],
        }
        return PassResult(
            converted.graph_module, modified=converted.weights + tables > 0, stats=stats
        )

    def _dynamic(
        self,
        gm: GraphModule,
        ctx: PassContext,
        layers: list,
        refused: list[Refusal],
        folded: int,
        functional: int,
    ) -> PassResult:
        """Dynamic int8 linears (some kept float by ``dynamic_mixed``), then the embeddings."""
        layers, convs = dynamic_layers(layers, gm)
        refused += [Refusal(node, reason) for node, reason in convs]
        probe = list(take_samples(self._probe_batches(ctx), self.sensitivity_samples))
        reference = run_batches(gm, probe)
        table = (
            layer_sensitivity(
                gm,
                layers,
                {},
                probe,
                convert_fn=functools.partial(convert_dynamic, weight_qmax=self._weight_qmax),
                reference=reference,
            )
            if self.scheme == "dynamic_mixed" or self.sensitivity
            else []
        )
        stats: dict[str, Any] = {"scheme": self.scheme, **self._weight_range_stats}
        if self.scheme == "dynamic_mixed":
            choice = choose_float_layers(
                gm,
                layers,
                {},
                table,
                probe,
                min_cosine=self.min_cosine,
                convert_fn=self._dynamic_with_embeddings,
                reference=reference,
            )
            converted = choice.converted
            for layer in choice.float_layers:
                refused.append(Refusal(layer.node, "kept in float by mixed precision"))
            stats |= {"min_cosine": self.min_cosine, "budget_met": choice.met}
            stats["mixed_evaluations"] = choice.evaluations
        else:
            converted = self._dynamic_with_embeddings(gm, layers)
        if self._int8_tables:
            refused += [Refusal(n, why) for n, why in embedding_candidates(gm, self.skip)[1]]
        tables = int8_embeddings(converted.graph_module)
        score = agreement(reference, run_batches(converted.graph_module, probe))
        stats |= {
            "layers_int8": converted.weights,
            "dynamic_inputs": converted.activation_pairs,
            "embeddings_int8": tables,
            "layers_float": len(refused),
            "cosine": score.cosine,
            "top1_agreement": score.top1_agreement,
            "folded_batchnorm": folded,
            "functionalized": functional,
            "sensitivity": table,
            "refused": [asdict(r) for r in refused],
        }
        modified = converted.weights + tables > 0
        return PassResult(converted.graph_module, modified=modified, stats=stats)

    def _dynamic_with_embeddings(
        self, gm: GraphModule, layers: list, qparams: object = None, **_: object
    ) -> Converted:
        """``convert_dynamic`` and then the int8 tables: a mixed candidate is scored whole."""
        converted = convert_dynamic(gm, layers, weight_qmax=self._weight_qmax)
        if self._int8_tables:
            quantize_embeddings(converted.graph_module, self.skip)
        return converted

    @property
    def _weight_qmax(self) -> int:
        """The int8 weights' bound that ``weight_range`` gives on this CPU."""
        return resolve_weight_range(self.weight_range)[1]

    @property
    def _weight_range_stats(self) -> dict[str, str]:
        weights, _qmax, why = resolve_weight_range(self.weight_range)
        return {"weight_range": weights, "weight_range_reason": why}

    @property
    def _int8_tables(self) -> bool:
        return self.embeddings == "int8" or (self.embeddings == "auto" and self.scheme in DYNAMIC)

    def _embeddings(self, gm: GraphModule, refused: list[Refusal]) -> int:
        """int8 embedding tables where ``embeddings`` asks for them (in place on ``gm``)."""
        if not self._int8_tables:
            return 0
        refused += [Refusal(n, why) for n, why in embedding_candidates(gm, self.skip)[1]]
        return quantize_embeddings(gm, self.skip)

    def _probe_batches(self, ctx: PassContext) -> list[tuple[Tensor, ...]]:
        """Samples to score a dynamic result on: calibration data if any, else the example."""
        if ctx.calibration is None or self.calibration.source == "example_inputs":
            return [ctx.example_inputs]
        return self._batches(ctx)

    def _batches(self, ctx: PassContext) -> list[tuple[Tensor, ...]]:
        source = (
            [ctx.example_inputs] if self.calibration.source == "example_inputs" else ctx.calibration
        )
        try:
            batches = list(
                take_samples(input_batches(source, ctx.example_inputs), self.calibration.samples)
            )
        except TypeError as exc:
            raise PassError(self.name, f"bad calibration data: {exc}") from exc
        if not batches:
            raise PassError(self.name, "the calibration data yielded no batches")
        return batches


def _leading_same(probe: list[tuple[Tensor, ...]], batches: list[tuple[Tensor, ...]]) -> int:
    """How many of the probe's first batches are calibration batches, unsliced (the float
    outputs calibration computes for those are the probe's reference, bit for bit)."""
    count = 0
    for mine, theirs in zip(probe, batches, strict=False):
        if mine is not theirs:
            break
        count += 1
    return count
