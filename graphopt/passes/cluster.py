"""Weight sharing with a codebook (Han et al., Deep Compression): k-means per layer or channel.

Match → check → rewrite: every conv1d/2d/3d and linear whose weight is a float parameter of
its own (``graphopt.sparsity.layers``; others are refusals with the reason) is clustered into
``2^bits`` centroids by 1-D k-means (``graphopt.codebook.kmeans``: ``init`` linear or density,
``granularity`` layer or channel), and each weight is replaced by its centroid.

Composes with ``sparsify``: a layer holding exact zeros keeps zero as its own, fixed cluster
(entry 0), so pruned weights stay exactly zero through any later ``recover`` (a mask on that
entry). With int8: ``form: dense`` keeps plain weights, so ``quantize`` after ``cluster``
stores them int8 (each channel then holds at most ``2^bits`` distinct int8 values) and QAT
still trains the centroids; ``form: gather`` (default) puts ``codebook[index]`` in the graph, so
the ONNX file stores uint8 indices and the codebook, and ``quantize`` leaves those layers float
(their weight is no parameter; it says so). ``graphopt.codebook.form`` describes both.

Centroids are fine-tuned by ``recover``: in gather form the codebook is a parameter, and the
lookup's backward sums the gradients of a cluster's weights into its centroid; in dense form
``graphopt.codebook.training`` ties the weights to their centroids while training.

A layer with no more distinct values than free centroids is coded exactly (``exact``): e.g.
8 bits on a layer of at most 256 values changes nothing. Stats per layer: clusters used,
whether exact, the weight's relative L2 error, and its bytes with ``bits``-bit indices, with
Huffman-coded indices and — with a zero cluster — Deep Compression's sparse coding; the model's
bytes in each and stored (``graphopt.codebook.storage``), and the ratio to the dense model.
Approximate (``exact = False``). A second run refuses clustered layers (idempotent).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import torch
from pydantic import Field
from torch.fx import GraphModule

from graphopt.codebook.form import (
    LOOKUP_META,
    codebook_tensors,
    lookup,
    write_dense,
    write_gather,
)
from graphopt.codebook.kmeans import INITS, CodebookFit, fit_codebook
from graphopt.codebook.storage import model_storage
from graphopt.ir import get_tensor
from graphopt.options import Names, Options
from graphopt.passes.base import Pass, PassContext, PassResult, Refusal, register_pass
from graphopt.sparsity.layers import WeightRef, check_names, find_weights
from graphopt.sparsity.masks import graph_masks
from graphopt.sparsity.storage import tensor_bytes

__all__ = ["Cluster"]

FORMS = ("gather", "dense")


@register_pass
class Cluster(Pass):
    """Share weights through a k-means codebook of 2^bits centroids (Deep Compression)."""

    name = "cluster"
    exact = False

    class Options(Options):
        bits: int = Field(4, ge=2, le=8, description="index bits: 2^bits centroids")
        granularity: Literal["layer", "channel"] = Field(
            "layer", description="one codebook per layer or per output channel"
        )
        init: Literal[INITS] = Field("linear", description="k-means start: linear or density")
        form: Literal[FORMS] = Field(
            "gather", description="gather: codebook[index] in the graph; dense: plain weights"
        )
        skip: Names = Field((), description="module paths left as they are")

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        check_names(gm, self.name, "skip", self.skip)
        refs, refused = find_weights(gm, self.skip, marker=LOOKUP_META)
        refs = self._not_clustered(gm, refs, refused)
        nodes = {n.name: n for n in gm.graph.nodes}
        masks = graph_masks(gm)
        dense_before = sum(tensor_bytes(gm).values())
        layers, changed = [], 0
        for ref in refs:
            node = nodes[ref.node]
            weight = get_tensor(gm, node.args[1]).detach().clone()
            zero = bool((weight == 0).any()) or ref.target in masks
            fit = fit_codebook(
                weight,
                self.bits,
                per_channel=self.granularity == "channel",
                init=self.init,
                zero=zero,
            )
            if self.form == "gather":
                write_gather(gm, node, fit, self.bits)
                changed += 1
            else:
                changed += write_dense(gm, node, fit, self.bits)
            layers.append(_layer_row(ref, weight, fit))
        storage = model_storage(gm)
        stats: dict[str, Any] = {
            "bits": self.bits,
            "granularity": self.granularity,
            "form": self.form,
            "clustered": len(layers),
            "bytes_dense": dense_before,
            "bytes_bits": storage["bytes_bits"],
            "bytes_huffman": storage["bytes_huffman"],
            "bytes_stored": storage["bytes_stored"],
            "size_ratio": dense_before / max(storage["bytes_stored"], 1),
            "layers": _merge(layers, storage["layers"]),
            "refused": [asdict(r) for r in refused],
        }
        return PassResult(gm, modified=changed > 0, stats=stats)

    def _not_clustered(
        self, gm: GraphModule, refs: list[WeightRef], refused: list[Refusal]
    ) -> list[WeightRef]:
        """Dense-form layers whose weights still equal their codebook are done already."""
        kept = []
        for ref in refs:
            if codebook_tensors(gm, ref.target) is not None:
                refused.append(Refusal(ref.where, "already clustered (dense form)"))
            else:
                kept.append(ref)
        return kept


def _layer_row(ref: WeightRef, weight: torch.Tensor, fit: CodebookFit) -> dict[str, Any]:
    approx = lookup(fit.centroids, fit.index).to(weight.dtype)
    norm = float(weight.double().norm())
    error = float((approx.double() - weight.double()).norm()) / norm if norm else 0.0
    return {
        "layer": ref.where,
        "weight": ref.target,
        "exact": fit.exact,
        "zero": fit.zero,
        "error": error,
    }


def _merge(layers: list[dict[str, Any]], sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_weight = {row["weight"]: row for row in sizes}
    return [{**row, **by_weight.get(row["weight"], {})} for row in layers]
