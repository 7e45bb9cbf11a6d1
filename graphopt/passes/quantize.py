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

Calibration data is required for int8 and mixed: ``ctx.extras["calibration"]`` (an iterable
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

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from torch import Tensor
from torch.fx import GraphModule

from graphopt.checks import is_int, is_number
from graphopt.data import input_batches
from graphopt.errors import PassError
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.passes.fold_batchnorm import FoldBatchNorm
from graphopt.quant.calibrate import take_samples
from graphopt.quant.fp16 import store_weights_fp16
from graphopt.quant.functionalize import functionalize_inplace
from graphopt.quant.observers import OBSERVERS
from graphopt.quant.placement import find_layers
from graphopt.quant.qat import is_quantized
from graphopt.quant.qparams import ACTIVATION_DTYPES
from graphopt.quant.quantizer import agreement, calibrate, convert, run_batches
from graphopt.quant.sensitivity import choose_float_layers, layer_sensitivity

__all__ = ["Quantize"]

SCHEMES = ("int8", "mixed", "fp16")
_CALIBRATION_KEYS = {"samples", "source"}
_SOURCES = ("data", "example_inputs")


@register_pass
class Quantize(Pass):
    """Quantize: int8 weights and calibrated activations (QDQ), mixed precision, or fp16."""

    name = "quantize"
    exact = False

    def __init__(
        self,
        *,
        scheme: str = "int8",
        activations: str = "uint8",
        observer: str = "minmax",
        percentile: float = 99.99,
        calibration: Mapping[str, Any] | None = None,
        skip: Sequence[str] = (),
        min_cosine: float = 0.999,
        sensitivity: bool = False,
        sensitivity_samples: int = 32,
        progress: bool = True,
    ) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
        if activations not in ACTIVATION_DTYPES:
            raise ValueError(
                f"activations must be one of {sorted(ACTIVATION_DTYPES)}, got {activations!r}"
            )
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {sorted(OBSERVERS)}, got {observer!r}")
        if not (is_number(percentile) and 50 < percentile <= 100):
            raise ValueError(f"percentile must be a number in (50, 100], got {percentile!r}")
        if not (is_number(min_cosine) and 0 < min_cosine <= 1):
            raise ValueError(f"min_cosine must be a number in (0, 1], got {min_cosine!r}")
        if isinstance(skip, str) or not all(isinstance(s, str) and s for s in skip):
            raise ValueError(f"skip must be a list of module paths or types, got {skip!r}")
        if not (is_int(sensitivity_samples) and sensitivity_samples >= 1):
            raise ValueError(
                f"sensitivity_samples must be an int >= 1, got {sensitivity_samples!r}"
            )
        self.scheme = scheme
        self.activations = activations
        self.observer = observer
        self.percentile = float(percentile)
        self.calibration = _checked_calibration(calibration)
        self.skip = tuple(skip)
        self.min_cosine = float(min_cosine)
        self.sensitivity = bool(sensitivity)
        self.sensitivity_samples = sensitivity_samples
        self.progress = bool(progress)

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        if self.scheme == "fp16" or self.calibration["source"] == "example_inputs":
            return
        if ctx.extras.get("calibration") is None:
            raise PassError(
                self.name,
                f"scheme {self.scheme!r} needs calibration data and none was given: add a "
                "`data:` to the recipe (a task with calibration batches), pass "
                "PassContext(extras={'calibration': [(x1,), (x2,), ...]}), or calibrate on "
                "the example inputs with calibration: {source: example_inputs}",
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
        batches = self._batches(ctx)
        qparams = calibrate(
            gm,
            layers,
            batches,
            observer=self.observer,
            activations=self.activations,
            percentile=self.percentile,
            progress=self.progress,
        )
        probe = list(take_samples(batches, self.sensitivity_samples))
        table = (
            layer_sensitivity(gm, layers, qparams, probe)
            if self.scheme == "mixed" or self.sensitivity
            else []
        )
        stats: dict[str, Any] = {"scheme": self.scheme}
        if self.scheme == "mixed":
            choice = choose_float_layers(
                gm, layers, qparams, table, probe, min_cosine=self.min_cosine
            )
            converted = choice.converted
            for layer in choice.float_layers:
                refused.append(Refusal(layer.node, "kept in float by mixed precision"))
            stats |= {"min_cosine": self.min_cosine, "budget_met": choice.met}
            stats["mixed_evaluations"] = choice.evaluations
        else:
            converted = convert(gm, layers, qparams)
        score = agreement(run_batches(gm, probe), run_batches(converted.graph_module, probe))
        stats |= {
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
        return PassResult(converted.graph_module, modified=converted.weights > 0, stats=stats)

    def _batches(self, ctx: PassContext) -> list[tuple[Tensor, ...]]:
        source = (
            [ctx.example_inputs]
            if self.calibration["source"] == "example_inputs"
            else ctx.extras["calibration"]
        )
        try:
            batches = list(
                take_samples(input_batches(source, ctx.example_inputs), self.calibration["samples"])
            )
        except TypeError as exc:
            raise PassError(self.name, f"bad calibration data: {exc}") from exc
        if not batches:
            raise PassError(self.name, "the calibration data yielded no batches")
        return batches


def _checked_calibration(calibration: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(calibration or {})
    unknown = sorted(set(options) - _CALIBRATION_KEYS)
    if unknown:
        raise ValueError(
            f"calibration has no key {unknown[0]!r}; its keys: {sorted(_CALIBRATION_KEYS)}"
        )
    samples = options.get("samples", 128)
    if not (is_int(samples) and samples >= 1):
        raise ValueError(f"calibration samples must be an int >= 1, got {samples!r}")
    source = options.get("source", "data")
    if source not in _SOURCES:
        raise ValueError(f"calibration source must be one of {list(_SOURCES)}, got {source!r}")
    return {"samples": samples, "source": source}
