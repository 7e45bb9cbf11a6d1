"""Output fidelity of a compressed model against its original on the same inputs.

``cosine`` over all floating outputs flattened together (1 when equal), and the relative
error of the pass manager (``max|y* − y| / max|y|``, worst over outputs), so the report's
fidelity and the per-stage error are one definition.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["cosine", "flat_outputs", "output_fidelity"]


def flat_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The model's tensor outputs on ``inputs`` (no grad), in pytree order."""
    with torch.no_grad():
        out = model(*inputs)
    return [t.detach() for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity in [-1, 1]; exactly 1 for equal outputs (no rounding to 1 ± 4e-16)."""
    if a.shape == b.shape and torch.equal(a, b):
        return 1.0
    value = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return max(-1.0, min(1.0, value))


def output_fidelity(
    original: nn.Module, compressed: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    from graphopt.pass_manager import relative_error

    ref, got = flat_outputs(original, inputs), flat_outputs(compressed, inputs)
    floats = [(r, g) for r, g in zip(ref, got, strict=True) if r.is_floating_point()]
    if not floats or any(r.shape != g.shape for r, g in floats):
        return {"cosine": float("nan"), "relative_error": relative_error(ref, got)}
    a = torch.cat([r.double().flatten() for r, _ in floats])
    b = torch.cat([g.double().flatten() for _, g in floats])
    return {"cosine": cosine(a, b), "relative_error": relative_error(ref, got)}
