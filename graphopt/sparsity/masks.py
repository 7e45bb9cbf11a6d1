"""Sparsity masks that outlive the pass that chose them: stored on the graph, held in training.

Why on ``gm.meta`` (``MASK_META``: parameter target → bool tensor, True = kept) and not as
buffers in the graph: a mask is a constraint on training, not part of the computation, so the
deployed graph and its ONNX file stay exactly the dense layer with zeros; ``GraphModule``'s
deepcopy copies ``meta`` (the pass manager's copy, QAT's ``to_trainable``), so any later
``recover`` sees the masks of every earlier ``sparsify``. ``cluster`` adds masks of its own (the
fixed zero entry of a codebook).

``MaskGuard`` is how ``graphopt.recovery`` honours them: after each optimizer step it writes
exact zeros back into the masked entries. Re-zeroing after the step, rather than a gradient
hook alone, is what keeps them *exactly* zero under AdamW's decoupled weight decay and
momentum, which move a weight whose gradient is zero. A mask the guard cannot hold is refused
with the reason: a parameter that no longer exists (a later pass replaced it), or positions it
prunes that hold non-zero values (a later pass changed them). A mask whose shape no longer
matches (structured pruning sliced the layer) is re-derived from the parameter's exact zeros,
which slicing keeps, and says so.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import Tensor, nn

__all__ = ["MASK_META", "MaskGuard", "drop_mask", "graph_masks", "store_mask"]

MASK_META = "graphopt_masks"


def graph_masks(model: nn.Module) -> dict[str, Tensor]:
    """The masks stored on ``model.meta`` (a GraphModule's), else none."""
    meta = getattr(model, "meta", None)
    return dict(meta.get(MASK_META, {})) if isinstance(meta, dict) else {}


def store_mask(model: nn.Module, target: str, keep: Tensor) -> None:
    """Record that ``target``'s entries where ``keep`` is False are pruned (exactly zero)."""
    model.meta.setdefault(MASK_META, {})[target] = keep.detach().to(torch.bool).clone()


def drop_mask(model: nn.Module, target: str) -> None:
    """Forget ``target``'s mask (its parameter was replaced, e.g. by a codebook)."""
    masks = getattr(model, "meta", {}).get(MASK_META)
    if masks is not None:
        masks.pop(target, None)


class MaskGuard:
    """Holds the masked entries of ``model``'s parameters at exactly zero while it trains.

    ``covered``: parameter names whose masks another mechanism holds (a weight tied to a
    codebook whose zero entry is fixed); they are skipped, not refused.
    """

    def __init__(
        self, model: nn.Module, masks: Mapping[str, Tensor], covered: Collection[str] = ()
    ) -> None:
        params = dict(model.named_parameters())
        self.held: list[tuple[str, nn.Parameter, Tensor]] = []
        self.refused: list[dict[str, str]] = []
        for name, keep in masks.items():
            if name in covered:
                continue
            param = params.get(name)
            if param is None:
                self._refuse(name, "no such parameter any more (a later pass replaced it)")
                continue
            keep = keep.to(param.device)
            if tuple(keep.shape) != tuple(param.shape):
                derived = param.detach() != 0
                self._refuse(
                    name,
                    f"mask shape {tuple(keep.shape)} ≠ parameter shape {tuple(param.shape)} (a "
                    "later pass changed the layer); re-derived from its exact zeros",
                    held=True,
                )
                keep = derived
            elif bool((param.detach()[~keep] != 0).any()):
                self._refuse(name, "pruned positions hold non-zero values; trained unmasked")
                continue
            self.held.append((name, param, keep))

    def _refuse(self, name: str, reason: str, *, held: bool = False) -> None:
        self.refused.append({"tensor": name, "reason": reason, "held": str(held).lower()})

    def __len__(self) -> int:
        return len(self.held)

    def after_step(self) -> None:
        """Write exact zeros into every masked entry (call after each optimizer step)."""
        with torch.no_grad():
            for _name, param, keep in self.held:
                param.masked_fill_(~keep, 0.0)
