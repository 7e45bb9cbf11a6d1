"""Typed errors. Every message names what failed (pass, node, option) and how to proceed."""

from __future__ import annotations

import traceback

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CaptureError",
    "GraphoptError",
    "NumericsError",
    "PassError",
    "RecipeError",
    "user_failure",
]


class GraphoptError(Exception):
    """Base class of every error graphopt raises on purpose."""


class CaptureError(GraphoptError):
    """torch.export could not capture the model."""


class PassError(GraphoptError):
    """A pass refused its input or produced an invalid graph."""

    def __init__(self, pass_name: str, message: str) -> None:
        super().__init__(f"[{pass_name}] {message}")
        self.pass_name = pass_name


class NumericsError(PassError):
    """An exact pass changed the model's outputs beyond its tolerance."""


class BackendError(GraphoptError):
    """A backend failed to export, compile or run a model."""


class BackendUnavailableError(BackendError):
    """An optional backend (e.g. TVM) is not installed."""


class RecipeError(GraphoptError):
    """A recipe, CLI argument or option is invalid."""


# Frames inside these are not the user's code: a failure is located at the innermost other one.
_LIBRARY_MARKERS = ("/torch/", "/site-packages/", "/graphopt/", "<frozen ")


def user_failure(exc: BaseException) -> str:
    """``raised ValueError: boom (at pkg/mod.py:12)`` and, after a newline, the traceback.

    For user code that fails inside graphopt (a factory, an evaluate function, a module that
    raises on import): the first line is what the CLI prints; the traceback after it is shown
    only with ``--debug``.
    """
    message = str(exc).strip().splitlines()
    cause = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    frames = traceback.extract_tb(exc.__traceback__)
    users = [f for f in frames if not any(m in f.filename for m in _LIBRARY_MARKERS)]
    where = f" (at {users[-1].filename}:{users[-1].lineno})" if users else ""
    tb = "".join(traceback.format_exception(exc)).rstrip()
    return f"raised {cause}{where}\n{tb}"
