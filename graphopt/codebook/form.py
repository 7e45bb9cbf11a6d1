"""Where a codebook lives: in the graph as a lookup (gather form) or beside it (dense form).

- **gather**: the weight becomes ``codebook[index]`` in the graph — a float parameter
  ``<weight>_codebook`` (``(K,)``, or ``(C, K)`` per channel), a ``uint8`` buffer
  ``<weight>_index`` of the weight's shape, and ``aten.index`` (per layer) or ``aten.gather``
  along dim 1 (per channel) after a cast to int64. The ONNX export keeps the uint8 indices and
  the small codebook as initializers behind ``Cast → GatherND``/``GatherElements``: the file
  holds one byte per weight instead of four. ONNX Runtime constant-folds the lookup when it
  loads the model (its optimized graph is the plain ``Conv``), so latency is the dense model's.
  Training needs nothing special: the codebook is a parameter, and the lookup's backward sums
  the gradients of all weights of a cluster into its centroid — Deep Compression's centroid
  update. Later weight rewrites (BatchNorm folding, int8) do not apply to such a layer: its
  weight is no parameter, and they refuse it with that reason.
- **dense**: the weight stays a plain parameter holding the centroid values, so every later
  pass applies; ``gm.meta[CODEBOOK_META]`` keeps the index and the centroids, and
  ``graphopt.codebook.training`` ties the weight to them while ``recover`` trains.

A fixed zero entry (``zero``, see ``graphopt.codebook.kmeans``) is held at zero through
training by a mask (``graphopt.sparsity.masks``) on entry 0 of the codebook.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from graphopt.codebook.kmeans import CodebookFit
from graphopt.ir import drop_unused_attribute, fresh_attribute_name, get_tensor, set_tensor
from graphopt.sparsity.masks import drop_mask, store_mask

__all__ = [
    "CODEBOOK_META",
    "LOOKUP_META",
    "codebook_tensors",
    "entries",
    "lookup",
    "write_dense",
    "write_gather",
    "zero_entry_mask",
]

aten = torch.ops.aten
CODEBOOK_META = "graphopt_codebooks"  # gm.meta: weight target → entry (see _entry)
LOOKUP_META = "graphopt_codebook"  # node.meta of the lookup that computes a weight


def lookup(centroids: Tensor, index: Tensor) -> Tensor:
    """``centroids[index]``: one codebook ``(K,)``, or one per output channel ``(C, K)``."""
    index = index.long()
    if centroids.dim() == 1:
        return centroids[index]
    rows = index.reshape(index.shape[0], -1)
    return torch.gather(centroids, 1, rows).reshape(index.shape)


def zero_entry_mask(centroids: Tensor) -> Tensor:
    """Keep mask of a codebook whose entry 0 is the fixed zero."""
    keep = torch.ones_like(centroids, dtype=torch.bool)
    keep[..., 0] = False
    return keep


def write_gather(gm: GraphModule, layer: Node, fit: CodebookFit, bits: int) -> None:
    """Replace ``layer``'s weight by ``codebook[index]`` nodes; drop the weight tensor."""
    weight_node = layer.args[1]
    target = str(weight_node.target)
    shape = list(get_tensor(gm, weight_node).shape)
    book = fresh_attribute_name(gm, f"{target}_codebook")
    index = fresh_attribute_name(gm, f"{target}_index")
    set_tensor(gm, book, fit.centroids, parameter=True)
    set_tensor(gm, index, fit.index, parameter=False)
    graph = gm.graph
    with graph.inserting_before(layer):
        as_long = graph.call_function(
            aten._to_copy.default, (graph.get_attr(index),), {"dtype": torch.int64}
        )
        codebook = graph.get_attr(book)
        if fit.centroids.dim() == 1:
            weight = graph.call_function(aten.index.Tensor, (codebook, [as_long]))
        else:
            rows = graph.call_function(aten.view.default, (as_long, [shape[0], -1]))
            gathered = graph.call_function(aten.gather.default, (codebook, 1, rows))
            weight = graph.call_function(aten.view.default, (gathered, shape))
    weight.meta[LOOKUP_META] = target
    layer.replace_input_with(weight_node, weight)
    drop_unused_attribute(gm, weight_node)
    drop_mask(gm, target)
    if fit.zero:
        store_mask(gm, book, zero_entry_mask(fit.centroids))
    _entries(gm)[target] = _entry("gather", fit, bits, shape, codebook=book, index=index)


def write_dense(gm: GraphModule, layer: Node, fit: CodebookFit, bits: int) -> bool:
    """Set ``layer``'s weight to the centroid values, keep the codebook in ``gm.meta``.

    Returns whether any weight value changed.
    """
    weight = get_tensor(gm, layer.args[1])
    target = str(layer.args[1].target)
    new = lookup(fit.centroids, fit.index).to(weight.dtype)
    changed = not torch.equal(new, weight)
    # a new tensor, not copy_: unchanged tensors are shared with the original graph
    # (graphopt.sharing)
    set_tensor(gm, target, new, parameter=isinstance(weight, torch.nn.Parameter), copy=False)
    weight = get_tensor(gm, layer.args[1])
    if fit.zero:
        store_mask(gm, target, fit.index != 0)
    entry = _entry("dense", fit, bits, list(weight.shape))
    entry |= {"index": fit.index.clone(), "centroids": fit.centroids.clone()}
    _entries(gm)[target] = entry
    return changed


def codebook_tensors(gm: GraphModule, target: str) -> tuple[Tensor, Tensor] | None:
    """``(centroids, index)`` of the codebook of weight ``target``, None when it is stale.

    Stale: the tensors are gone, or (dense form) the weight no longer equals the lookup, which
    is what a later pass that rewrote the weight (BatchNorm folding, int8) leaves.
    """
    entry = _entries(gm).get(target)
    if entry is None:
        return None
    tensors = _named_tensors(gm)
    if entry["form"] == "gather":
        centroids, index = tensors.get(entry["codebook"]), tensors.get(entry["index"])
        return None if centroids is None or index is None else (centroids.detach(), index)
    weight = tensors.get(target)
    centroids, index = entry["centroids"], entry["index"]
    if weight is None or tuple(weight.shape) != tuple(index.shape):
        return None
    if not torch.equal(lookup(centroids, index).to(weight.dtype), weight.detach()):
        return None
    return centroids, index


def entries(gm: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """The codebook entries stored on ``gm.meta`` (empty when none)."""
    meta = getattr(gm, "meta", None)
    return meta.get(CODEBOOK_META, {}) if isinstance(meta, dict) else {}


def _entries(gm: GraphModule) -> dict[str, dict[str, Any]]:
    return gm.meta.setdefault(CODEBOOK_META, {})


def _entry(form: str, fit: CodebookFit, bits: int, shape: list[int], **more: str) -> dict:
    return {
        "form": form,
        "bits": bits,
        "zero": fit.zero,
        "shape": shape,
        "per_channel": fit.centroids.dim() == 2,
        **more,
    }


def _named_tensors(gm: GraphModule) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = dict(gm.named_parameters())
    tensors.update(gm.named_buffers())
    return tensors
