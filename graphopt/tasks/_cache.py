"""Trained task models cached once per machine, trusted only when a checksum vouches for them.

Why one helper for every task: a built-in task trains its model on first use (minutes) and
reuses it afterwards, and a wrong cache entry is worse than none: weights that were zeroed,
half-written by an older graphopt without atomic writes, or replaced load fine and would be
compressed and reported as if trained. So each weights file ``<name>.pt`` has a JSON sidecar
``<name>.json`` recording the sha256 of exactly the bytes written at training time (and the
task metric then measured); an entry whose sidecar is missing, unreadable or does not match,
whose weights do not load into the architecture or are not finite, is reported on one line
and retrained from the seeded initialisation, never loaded as it is.

The entry's name carries a key that hashes the training config and the *source* of the code
that determines the weights (data split, architecture, training loop), so editing that code
retrains while editing how the cache is read or how the metric is reported does not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from graphopt.cache import atomic_write
from graphopt.errors import GraphoptError

__all__ = [
    "UntrustedEntry",
    "all_finite",
    "code_key",
    "first_line",
    "load_or_train",
    "load_verified",
    "sidecar_path",
    "verified_weights",
]


class UntrustedEntry(Exception):
    """A cache entry that must not be loaded; the message says why, on one line."""


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar beside the weights file ``path``."""
    return path.with_suffix(".json")


def code_key(config: Mapping[str, Any], code: Iterable[object]) -> str:
    """16 hex digits of the sha256 of ``config`` and of the source of every object in ``code``."""
    sources = "".join(inspect.getsource(obj) for obj in code)  # type: ignore[arg-type]
    payload = json.dumps({"config": dict(config), "code": sources}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def verified_weights(path: Path) -> bytes:
    """The bytes of the weights file at ``path``, if its JSON sidecar's sha256 matches them.

    Entries from before the sidecar carried a checksum are stale by this rule and get
    retrained. The bytes are read once, then hashed and loaded from memory, so the file can't
    change between the two.
    """
    sidecar = sidecar_path(path)
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UntrustedEntry(
            f"no checksum sidecar {sidecar.name}: written by an older graphopt or interrupted"
        ) from None
    except (OSError, ValueError, RecursionError) as exc:
        raise UntrustedEntry(f"sidecar {sidecar.name} unreadable: {first_line(exc)}") from exc
    expected = info.get("sha256") if isinstance(info, dict) else None
    if not isinstance(expected, str):
        raise UntrustedEntry(
            f"sidecar {sidecar.name} has no sha256: written by a graphopt that did not "
            "checksum its cache"
        )
    try:
        weights = path.read_bytes()
    except OSError as exc:
        raise UntrustedEntry(f"unreadable: {first_line(exc)}") from exc
    if hashlib.sha256(weights).hexdigest() != expected:
        raise UntrustedEntry(
            f"its sha256 does not match the one in {sidecar.name}: truncated or modified"
        )
    return weights


def load_verified(model: nn.Module, path: Path) -> None:
    """Load the verified weights at ``path`` into ``model``; raise ``UntrustedEntry`` if not."""
    weights = verified_weights(path)
    try:
        state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # a foreign format, another architecture under the same key
        raise UntrustedEntry(f"does not load: {first_line(exc)}") from exc
    if not all_finite(model):
        raise UntrustedEntry("holds non-finite weights")


def all_finite(model: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``model`` is finite."""
    return all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point()
    )


def first_line(exc: BaseException) -> str:
    """``TypeName: first line of the message``: what a one-line report of ``exc`` shows."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_or_train(
    path: Path,
    *,
    task: str,
    build: Callable[[], nn.Module],
    fit: Callable[[nn.Module], object],
    score: Callable[[nn.Module], dict[str, float]],
    config: Any,
    announce: str,
    diverged_hint: str,
) -> nn.Module:
    """The model cached at ``path`` (verified), or ``build()`` trained by ``fit`` and cached.

    ``task`` names the model in messages ("the digits model"), ``announce`` is printed before
    training (how long it takes), ``score`` gives the metrics the sidecar records and the
    closing message shows (its first value), ``diverged_hint`` says what to change when
    training ends with non-finite weights (an error: such a model is never cached); ``config``
    is the training config, a dataclass, recorded in the sidecar. Messages
    go to stderr, one line each; the model comes back in eval mode.
    """
    if path.exists():
        model = build()
        try:
            load_verified(model, path)
            return model.eval()
        except UntrustedEntry as exc:
            print(
                f"graphopt: cached {task} model {path} rejected ({exc}); retraining "
                f"(delete {path.parent} to clear the cache)",
                file=sys.stderr,
            )
    print(
        f"graphopt: training the {task} model once ({announce}); cached in {path.parent}",
        file=sys.stderr,
    )
    model = build()  # from the seeded init, not from a rejected entry's weights
    start = time.perf_counter()
    fit(model)
    seconds = time.perf_counter() - start
    if not all_finite(model):
        raise GraphoptError(
            f"training the {task} model diverged (non-finite weights) with {config}; "
            f"{diverged_hint}"
        )
    model.eval()
    metrics = score(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    info = {
        "weights": path.name,
        "sha256": hashlib.sha256(weights).hexdigest(),
        "config": dataclasses.asdict(config),
        **metrics,
        "seconds": round(seconds, 1),
        "torch": torch.__version__,
    }
    # Weights first, sidecar second: a reader between the two (or after a crash) finds a
    # checksum that does not match and retrains, never a sidecar vouching for other bytes.
    atomic_write(path, weights)
    atomic_write(sidecar_path(path), json.dumps(info, indent=2).encode())
    shown = ", ".join(f"{name} {value:.2f}" for name, value in metrics.items())
    print(f"graphopt: {task} model trained in {seconds:.0f} s, {shown}", file=sys.stderr)
    return model.eval()
