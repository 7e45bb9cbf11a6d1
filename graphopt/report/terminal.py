"""The terminal view of a report (rich tables; wide in a log so nothing wraps)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from graphopt.report.text import human, metric_text, stage_notes

if TYPE_CHECKING:
    from graphopt.report.model import CompressionReport

__all__ = ["print_report"]


def print_report(report: CompressionReport, console: Any | None = None) -> None:
    """The terminal tables: GEM with TRM and DM rows, then the stages."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if not console.is_terminal:  # a pipe or a log: don't squeeze the tables into 80 columns
        console = Console(width=160, file=console.file)
    gem = Table(title=f"graphopt: {report.model}")
    for col in ("metric", "original", "compressed", "a/a*", "(a−a*)/a*"):
        gem.add_column(col, justify="left" if col == "metric" else "right")
    if report.task_metric:
        for name, value in report.task_metric["original"].items():
            new = report.task_metric["compressed"].get(name, math.nan)
            gem.add_row(f"TRM {name}", f"{value:.4f}", f"{new:.4f}", "", f"{new - value:+.4f}")
    for row in report.gem_rows():
        gem.add_row(
            str(row["metric"]),
            human(row["original"]),
            human(row["compressed"]),
            f"{row['compression_rate']:.3f}",
            f"{row['index_space_saving']:.3f}",
        )
    for lat in report.latencies:
        tuned = lat.info.get("tuned")
        label = f"latency {lat.backend}" + (
            "" if tuned is None else (" (tuned)" if tuned else " (untuned)")
        )
        gem.add_row(
            label,
            f"{lat.original_ms:.3f} ms",
            f"{lat.compressed_ms:.3f} ms",
            f"s/s* {lat.speedup:.3f}",
            "",
        )
    console.print(gem)
    stages = Table(title="stages")
    columns = ["stage", "modified", "time s", "params", "MACs", "size", "rel. error"]
    with_metric = any(s.task_metric for s in report.stages)
    for col in [*columns, *(["task metric"] if with_metric else []), "notes"]:
        stages.add_column(col)
    for s in report.stages:
        stages.add_row(
            s.name,
            str(s.modified),
            f"{s.seconds:.2f}",
            human(s.params),
            human(s.macs),
            f"{human(s.size_bytes)}B",
            f"{s.relative_error:.2e}",
            *([metric_text(s.task_metric)] if with_metric else []),
            stage_notes(s, limit=3),
        )
    console.print(stages)
