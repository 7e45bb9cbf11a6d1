"""Model factories the sweep tests name in recipes (Ray workers import them by name)."""

from __future__ import annotations

from torch import nn


def broken() -> nn.Module:
    """A factory that fails, so one variant of a sweep fails with a one-line error."""
    raise RuntimeError("boom: this factory always fails")
