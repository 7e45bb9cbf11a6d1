"""Per-layer sensitivity to int8 and the mixed-precision choice of layers kept in float.

Sensitivity of a layer: quantize that layer alone (its int8 weight, its input and output
activations; every other op float) and measure the output cosine against the float graph on
calibration data. The least cosine is the most sensitive layer.

Mixed precision keeps the ``k`` most sensitive layers in float and quantizes the rest, with
the least ``k`` whose full int8 graph reaches ``min_cosine``. ``k`` is found by bisection over
the sensitivity order, which assumes that keeping more layers in float does not lower the
cosine — true in the usual case, and the chosen point is re-measured, so the reported
cosine is the real one whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor
from torch.fx import GraphModule

from graphopt.quant.placement import QuantLayer
from graphopt.quant.qparams import ActivationQParams
from graphopt.quant.quantizer import Agreement, Converted, agreement, convert, run_batches

__all__ = ["Converter", "MixedChoice", "choose_float_layers", "layer_sensitivity"]

# ``quantizer.convert`` (static QDQ) or ``dynamic.convert_dynamic``: (gm, layers, qparams,
# activation_ops=) → Converted, so one search serves both schemes.
Converter = Callable[..., Converted]


@dataclass(frozen=True)
class MixedChoice:
    float_layers: tuple[QuantLayer, ...]
    converted: Converted
    agreement: Agreement
    met: bool
    evaluations: int


def layer_sensitivity(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    qparams: dict[str, ActivationQParams],
    batches: Sequence[tuple[Tensor, ...]],
    *,
    convert_fn: Converter = convert,
    reference: list[Tensor] | None = None,
) -> list[dict[str, object]]:
    """One row per layer, most sensitive first: cosine when only that layer is int8.

    ``reference``: the float outputs on ``batches`` when already known (run here if not)."""
    reference = run_batches(gm, batches) if reference is None else reference
    rows = []
    for layer in layers:
        alone = convert_fn(gm, [layer], qparams, activation_ops=False).graph_module
        score = agreement(reference, run_batches(alone, batches))
        rows.append(
            {
                "layer": layer.path or layer.node,
                "node": layer.node,
                "type": layer.type,
                "cosine": score.cosine,
                "error": 1.0 - score.cosine,
            }
        )
    return sorted(rows, key=lambda r: r["cosine"])


def choose_float_layers(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    qparams: dict[str, ActivationQParams],
    sensitivity: Sequence[dict[str, object]],
    batches: Sequence[tuple[Tensor, ...]],
    *,
    min_cosine: float,
    convert_fn: Converter = convert,
    reference: list[Tensor] | None = None,
) -> MixedChoice:
    """The fewest most-sensitive layers to keep in float so that cosine ≥ ``min_cosine``."""
    reference = run_batches(gm, batches) if reference is None else reference
    by_node = {layer.node: layer for layer in layers}
    order = [by_node[str(row["node"])] for row in sensitivity]
    evaluations = 0

    def attempt(k: int) -> tuple[Converted, Agreement]:
        nonlocal evaluations
        evaluations += 1
        kept = {layer.node for layer in order[:k]}
        converted = convert_fn(gm, [x for x in layers if x.node not in kept], qparams)
        return converted, agreement(reference, run_batches(converted.graph_module, batches))

    lo, hi = 0, len(order)
    results: dict[int, tuple[Converted, Agreement]] = {}
    results[0] = attempt(0)
    if results[0][1].cosine >= min_cosine:
        hi = 0
    else:
        lo = 1
    while lo < hi:  # invariant: k = hi meets the budget (k = len(order) is the float graph)
        mid = (lo + hi) // 2
        results[mid] = attempt(mid)
        if results[mid][1].cosine >= min_cosine:
            hi = mid
        else:
            lo = mid + 1
    if hi not in results:
        results[hi] = attempt(hi)
    converted, score = results[hi]
    return MixedChoice(tuple(order[:hi]), converted, score, score.cosine >= min_cosine, evaluations)
