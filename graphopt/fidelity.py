"""Output fidelity of a compressed model against its original on the same inputs.

``cosine`` over all floating outputs flattened together (1 when equal), and the relative
error of the pass manager (``max|y* − y| / max|y|``, worst over outputs), so the report's
fidelity and the per-stage error are one definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["cosine", "flat_outputs", "output_fidelity", "relative_error"]


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


def relative_error(
    reference: Sequence[torch.Tensor | np.ndarray], actual: Sequence[torch.Tensor | np.ndarray]
) -> float:
    """Worst over outputs of ``max|a − r| / max|r|`` (0 when both are all zero): the one
    definition the per-stage check, the report's fidelity and the backend check all use
    (tensors or NumPy arrays alike; each output normalised by its own scale, so a small
    output next to a large one is not drowned).

    Never hides a non-finite value: NaN in either side gives NaN, and an ``inf`` gives
    ``inf`` unless both sides hold the same infinity at the same places (then the error is
    that of the finite values). ``max`` is not used to combine, since ``max(x, nan)`` is ``x``.
    """
    worst = 0.0
    for ref, got in zip(map(_tensor, reference), map(_tensor, actual), strict=True):
        if ref.shape != got.shape:
            return math.inf
        if not ref.numel() or not (ref.is_floating_point() or got.is_floating_point()):
            if not torch.equal(ref, got):
                return math.inf
            continue
        ref64, got64 = ref.double(), got.double()
        if bool(ref64.isnan().any() or got64.isnan().any()):
            return math.nan
        infinite = ref64.isinf()
        if not torch.equal(infinite, got64.isinf()) or not torch.equal(
            ref64[infinite], got64[infinite]
        ):
            return math.inf
        ref64, got64 = ref64[~infinite], got64[~infinite]
        if not ref64.numel():
            continue
        scale = ref64.abs().max().item()
        diff = (ref64 - got64).abs().max().item()
        # an all-zero reference: any difference is infinitely large relative to it
        error = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        if error > worst:
            worst = error
    return worst


def _tensor(value: torch.Tensor | np.ndarray) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


def output_fidelity(
    original: nn.Module, compressed: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    ref, got = flat_outputs(original, inputs), flat_outputs(compressed, inputs)
    floats = [(r, g) for r, g in zip(ref, got, strict=True) if r.is_floating_point()]
    if not floats or any(r.shape != g.shape for r, g in floats):
        return {"cosine": float("nan"), "relative_error": relative_error(ref, got)}
    a = torch.cat([r.double().flatten() for r, _ in floats])
    b = torch.cat([g.double().flatten() for _, g in floats])
    return {"cosine": cosine(a, b), "relative_error": relative_error(ref, got)}
