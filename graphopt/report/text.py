"""Number and stats formatting shared by the markdown and terminal renderers."""

from __future__ import annotations

from typing import Any

from graphopt.pass_manager import StageReport

__all__ = ["human", "metric_text", "stage_notes", "stage_tables", "value_text"]


def metric_text(metric: dict[str, float] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in (metric or {}).items())


def value_text(value: float | None) -> str:
    import math

    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def stage_tables(stage: StageReport) -> dict[str, list[dict[str, Any]]]:
    """Every table a pass reported: each stats entry that is a list of mappings (refusals,
    frozen groups, sensitivity, channels, candidates, schedules…) — rendered for every pass
    alike, so no stat is dropped for want of pass-specific report code."""
    return {
        key: list(value)
        for key, value in stage.stats.items()
        if isinstance(value, (list, tuple))
        and value
        and all(isinstance(row, dict) for row in value)
    }


def stage_notes(stage: StageReport, *, limit: int | None = None) -> str:
    """The pass's scalar stats and its refusals; ``limit`` keeps the first few (terminal)."""
    simple = [(k, v) for k, v in stage.stats.items() if isinstance(v, (int, float, str))]
    notes = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in simple[:limit]
    )
    counts = [f"{key} {len(rows)}" for key, rows in stage_tables(stage).items()]
    if counts:  # the rows themselves are tables below the stage table
        notes += f"{', ' if notes else ''}" + ", ".join(counts)
    return notes


def human(value: float | str) -> str:
    if isinstance(value, str):
        return value
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"
