"""Typed errors. Every message names what failed (pass, node, option) and how to proceed."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CaptureError",
    "GraphoptError",
    "NumericsError",
    "PassError",
    "RecipeError",
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
