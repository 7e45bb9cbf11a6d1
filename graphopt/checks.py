"""Type checks for option validation (bool is not a number here, though Python says it is)."""

from __future__ import annotations

__all__ = ["is_int", "is_number"]


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
