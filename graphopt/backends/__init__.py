"""Backends by name: ``get_backend("onnxruntime", opset=18)`` for recipes and the CLI.

Each entry imports its backend class only when asked for, so importing this package never
imports onnxruntime or tvm (nor their graphopt modules). Options are the backend's keyword
arguments; an unknown one is refused here, by name, before the backend is built, so a typo
in a recipe fails at load time rather than being silently ignored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from graphopt.backends.base import Backend
from graphopt.errors import RecipeError
from graphopt.options import parse_options

__all__ = ["available_backends", "get_backend", "known_backends"]


def _torch() -> type:
    from graphopt.backends.torch_eager import TorchEagerBackend

    return TorchEagerBackend


def _onnxruntime() -> type:
    from graphopt.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend


def _tvm() -> type:
    # A plain import: the module imports TVM itself only inside ``compile`` (a missing TVM is a
    # BackendUnavailableError there), so an ImportError here is a bug in graphopt and must
    # surface as one, not read as "backend unavailable".
    from graphopt.backends.tvm import TVMBackend

    return TVMBackend


# name -> (loader of the backend class, the Python module its runtime needs)
_BACKENDS: dict[str, tuple[Callable[[], type], str | None]] = {
    "torch": (_torch, None),
    "onnxruntime": (_onnxruntime, "onnxruntime"),
    "tvm": (_tvm, "tvm"),
}
_ALIASES = {"ort": "onnxruntime"}


def known_backends() -> list[str]:
    """Every name ``get_backend`` accepts, aliases included."""
    return sorted([*_BACKENDS, *_ALIASES])


def available_backends() -> list[str]:
    """The canonical backend names whose runtime is installed (checked without importing it)."""
    names = []
    for name, (_, runtime) in _BACKENDS.items():
        if runtime is None or importlib.util.find_spec(runtime) is not None:
            names.append(name)
    return names


def get_backend(name: str, *, where: str | None = None, **options: Any) -> Backend:
    """Build backend ``name`` (or an alias, e.g. ``ort``) with keyword ``options``; bad ones
    are an ``OptionError`` whose message starts with ``where`` (e.g. ``backends[0].tvm``)."""
    if not isinstance(name, str):
        raise RecipeError(f"a backend name must be a string, got {type(name).__name__}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _BACKENDS:
        raise RecipeError(
            f"unknown backend {name!r}; known backends: {', '.join(known_backends())}"
        )
    cls = _BACKENDS[key][0]()
    parse_options(cls.Options, options, where=where or key)
    return cls(**options)
