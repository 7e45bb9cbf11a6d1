"""The accuracy-vs-cost picture of a search: every candidate, the Pareto front, the path taken.

Input is the ``adapt`` pass's stats as they are (``stats["candidates"]``, ``stats["chosen"]``):
points with a resource as a fraction of the original (``"latency"`` when every point has one,
else ``"macs"``) and a ``"metric"`` (higher is better). A point is on the Pareto front when no
other point is at most as costly and at least as good, and strictly better in one of the two.

Drawn with matplotlib's object API on an Agg canvas: no pyplot, so no global backend switch
and no figure left open in a process that also shows plots.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["cost_key", "pareto_front", "pareto_plot"]

Point = Mapping[str, Any]


def cost_key(points: Sequence[Point]) -> str:
    """``"latency"`` when every point has a latency, else ``"macs"``."""
    return "latency" if points and all(p.get("latency") is not None for p in points) else "macs"


def pareto_front(points: Sequence[Point], key: str | None = None) -> list[Point]:
    """The non-dominated points (lower cost, higher metric), by increasing cost."""
    key = key or cost_key(points)
    usable = [p for p in points if _finite(p.get(key)) and _finite(p.get("metric"))]
    ordered = sorted(usable, key=lambda p: (p[key], -p["metric"]))
    front: list[Point] = []
    for p in ordered:
        if not front or p["metric"] > front[-1]["metric"]:
            front.append(p)
    return front


def pareto_plot(
    candidates: Sequence[Point],
    chosen: Sequence[Point],
    path: str | Path,
    *,
    metric_name: str = "metric",
    title: str = "adapt: candidates, Pareto front and chosen path",
) -> Path:
    """Write a PNG scatter of ``candidates`` with the Pareto front and ``chosen`` path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    everything = [*candidates, *chosen]
    key = cost_key(everything)
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = [p for p in candidates if _finite(p.get(key)) and _finite(p.get("metric"))]
    ax.scatter(
        [p[key] for p in pts],
        [p["metric"] for p in pts],
        s=14,
        c="tab:gray",
        alpha=0.6,
        label=f"candidates ({len(pts)})",
    )
    front = pareto_front(everything, key)
    if front:
        ax.step(
            [p[key] for p in front],
            [p["metric"] for p in front],
            where="post",
            color="tab:blue",
            label="Pareto front",
        )
    path_pts = [p for p in chosen if _finite(p.get(key)) and _finite(p.get("metric"))]
    if path_pts:
        ax.plot(
            [p[key] for p in path_pts],
            [p["metric"] for p in path_pts],
            "o-",
            color="tab:red",
            label="chosen path",
        )
        last = path_pts[-1]
        ax.annotate(
            "result", (last[key], last["metric"]), textcoords="offset points", xytext=(6, 6)
        )
    ax.set_xlabel(f"{key} (fraction of the original)")
    ax.set_ylabel(metric_name)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
