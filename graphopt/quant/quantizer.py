"""Post-training int8 quantization of a captured graph, as library functions.

``prepare`` makes the graph functional and finds the quantizable layers; ``calibrate`` runs
the float graph on calibration batches and turns each site's observed range into
quantization parameters; ``convert`` writes a quantized copy for a chosen set of layers;
``agreement`` compares a quantized graph's outputs with the float one's. The ``quantize``
pass (``graphopt/passes/quantize.py``) and the mixed-precision search (``sensitivity.py``)
are built from these.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.fx import GraphModule

from graphopt.errors import NumericsError
from graphopt.ir import is_op
from graphopt.quant.calibrate import STAGE, observe
from graphopt.quant.observers import make_observer
from graphopt.quant.placement import QuantLayer, Sites, find_sites
from graphopt.quant.qparams import WEIGHT_QMAX, ActivationQParams, activation_qparams
from graphopt.quant.rewrite import insert_activation_qdq, quantize_weights
from graphopt.quant.simulate import fast_simulation
from graphopt.sharing import shared_copy

__all__ = [
    "Agreement",
    "Calibration",
    "Converted",
    "agreement",
    "calibrate",
    "convert",
    "run_batches",
]


@dataclass(frozen=True)
class Converted:
    graph_module: GraphModule
    weights: int  # int8 weight tensors written
    activation_pairs: int  # quantize/dequantize pairs inserted


@dataclass(frozen=True)
class Agreement:
    """Quantized vs float outputs: cosine similarity (all outputs flattened per sample, then
    averaged) and, for (N, classes) outputs, how often the arg-max class agrees."""

    cosine: float
    top1_agreement: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"cosine": self.cosine, "top1_agreement": self.top1_agreement}


@dataclass(frozen=True)
class Calibration:
    """Every site's quantization parameters, and the float outputs of the leading batches
    (``reference_batches`` of them, as :func:`run_batches` gives them)."""

    qparams: dict[str, ActivationQParams]
    reference: list[list[Tensor]]


def calibrate(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    batches: Sequence[tuple[Tensor, ...]],
    *,
    observer: str,
    activations: str,
    percentile: float = 99.99,
    progress: bool = False,
    reference_batches: int = 0,
) -> Calibration:
    """Quantization parameters of every site any layer set could need (all layers active)."""
    sites = find_sites(gm, {layer.node for layer in layers})
    observers = {name: make_observer(observer, percentile=percentile) for name in sites.own}
    kept = observe(gm, observers, batches, progress=progress, keep=reference_batches)
    levels = 256
    params = {}
    for name, obs in observers.items():
        if obs.seen:
            lo, hi = obs.range(levels)
            qp = activation_qparams(lo, hi, activations)
            if not (math.isfinite(qp.scale) and qp.scale > 0):
                raise NumericsError(
                    STAGE,
                    f"calibration gave node {name} the range [{lo}, {hi}] and scale "
                    f"{qp.scale}; a scale must be finite and > 0 (is the calibration data "
                    "finite and the float model's output there?)",
                )
            params[name] = qp
    return Calibration(params, [_flat(out) for out in kept])


def convert(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    qparams: dict[str, ActivationQParams],
    *,
    activation_ops: bool = True,
    weight_qmax: int = WEIGHT_QMAX,
) -> Converted:
    """A quantized copy of ``gm`` with ``layers`` in int8 (weights over [−weight_qmax,
    weight_qmax]) and every other conv/linear float."""
    out = shared_copy(gm)  # the rewrite sets new tensors: the float ones stay shared
    sites = find_sites(out, {layer.node for layer in layers}, activation_ops=activation_ops)
    missing = [s for s in sites.own if s not in qparams]
    if missing:  # a site calibration never reached (dead code): keep it float
        sites = type(sites)(
            tuple(s for s in sites.own if s in qparams),
            {k: v for k, v in sites.shared.items() if v in qparams},
            sites.float_readers,
        )
    scales = _input_scales(out, layers, sites, qparams)
    weights = quantize_weights(out, layers, scales, qmax=weight_qmax)
    pairs = insert_activation_qdq(out, sites, qparams)
    out.graph.lint()
    out.recompile()
    return Converted(out, weights, pairs)


def _input_scales(
    gm: GraphModule,
    layers: Sequence[QuantLayer],
    sites: Sites,
    qparams: dict[str, ActivationQParams],
) -> dict[str, float]:
    """Layer node → the activation scale of the input it reads quantized (where it does)."""
    nodes = {n.name: n for n in gm.graph.nodes}
    scales = {}
    for layer in layers:
        x = nodes[layer.node].args[0]
        name = getattr(x, "name", None)
        if name in sites.own or name in sites.shared:
            key = sites.shared.get(name, name)
            if key in qparams:
                scales[layer.node] = qparams[key].scale
    return scales


def run_batches(
    gm: torch.nn.Module,
    batches: Collection[tuple[Tensor, ...]],
    *,
    known: Sequence[list[Tensor]] = (),
) -> list[Tensor]:
    """Outputs of ``gm`` on every batch, each flattened to (batch, features), concatenated.

    ``known``: the outputs of the leading batches, already computed (calibration's): only
    the batches after them run. A QDQ graph runs as its ``fast_simulation`` (same values,
    fused kernels): these outputs only score it."""
    if isinstance(gm, GraphModule) and any(
        is_op(n, [torch.ops.quantized_decomposed.dequantize_per_tensor]) for n in gm.graph.nodes
    ):
        gm = fast_simulation(gm)
    rows = list(known[: len(batches)])
    with torch.no_grad():
        for inputs in list(batches)[len(rows) :]:
            rows.append(_flat(gm(*inputs)))
    return [torch.cat(parts) for parts in zip(*rows, strict=True)]


def _flat(out: object) -> list[Tensor]:
    """A forward's tensor outputs, detached, in float (what :func:`agreement` compares)."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, Tensor)]
    return [t.detach().float() for t in leaves]


def agreement(reference: Sequence[Tensor], outputs: Sequence[Tensor]) -> Agreement:
    """Cosine and top-1 agreement of ``outputs`` against ``reference`` (from ``run_batches``)."""
    ref = torch.cat([r.reshape(r.shape[0], -1) for r in reference], dim=1).double()
    got = torch.cat([o.reshape(o.shape[0], -1) for o in outputs], dim=1).double()
    cosine = torch.nn.functional.cosine_similarity(ref, got, dim=1, eps=1e-12).mean().item()
    top1 = None
    first_ref, first_out = reference[0], outputs[0]
    if first_ref.dim() == 2 and first_ref.shape[1] > 1:
        top1 = (first_ref.argmax(1) == first_out.argmax(1)).double().mean().item()
    return Agreement(cosine, top1)
