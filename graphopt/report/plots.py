"""The report's plots: the trade-off per stage, and the candidates of search stages."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from graphopt.report.model import CompressionReport

__all__ = ["search_plots", "stage_plot"]


def stage_plot(report: CompressionReport, path: Path) -> None:
    """report.png: size and MACs per stage with the task metric, and latency per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = _first_metric(report)
    panels = 3 if metric else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    ax_size, ax_lat = axes[0], axes[-1]
    names = [s.name for s in report.stages]
    if metric:  # the trade-off users came for: what each stage did to the task metric
        ax_metric = axes[1]
        values = [(s.task_metric or {}).get(metric) for s in report.stages]
        ax_metric.plot(names, [float("nan") if v is None else v for v in values], "o-")
        for x, v in enumerate(values):
            if v is not None:
                ax_metric.annotate(f"{v:.4g}", (x, v), textcoords="offset points", xytext=(0, 6))
        ax_metric.set_ylabel(metric)
        ax_metric.set_title(f"task metric per stage ({metric})")
        ax_metric.tick_params(axis="x", rotation=30)
    ax_size.bar(names, [s.size_bytes / 1e6 for s in report.stages], color="#4c72b0")
    ax_size.set_ylabel("model size (MB)")
    ax_macs = ax_size.twinx()
    ax_macs.plot(names, [s.macs / 1e6 for s in report.stages], "o-", color="#dd8452")
    ax_macs.set_ylabel("MMACs")
    ax_macs.set_ylim(bottom=0)
    ax_size.set_title("size and MACs per stage")
    ax_size.tick_params(axis="x", rotation=30)
    if report.latencies:
        backends = [lat.backend for lat in report.latencies]
        xs = range(len(backends))
        ax_lat.bar(
            [x - 0.2 for x in xs],
            [lat.original_ms for lat in report.latencies],
            0.4,
            label="original",
        )
        ax_lat.bar(
            [x + 0.2 for x in xs],
            [lat.compressed_ms for lat in report.latencies],
            0.4,
            label="compressed",
        )
        ax_lat.set_xticks(list(xs), backends)
        ax_lat.legend()
    ax_lat.set_ylabel("median latency (ms)")
    ax_lat.set_title("latency per backend")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def search_plots(report: CompressionReport, folder: Path) -> list[Path]:
    """A Pareto plot (metric vs cost of every candidate tried) per search stage."""
    from graphopt.search.pareto import pareto_plot

    paths = []
    for index, stage in enumerate(report.stages):
        candidates = stage.stats.get("candidates")
        if not candidates:
            continue
        path = folder / f"pareto_{index}_{stage.name}.png"
        pareto_plot(
            candidates,
            stage.stats.get("chosen") or [],
            path,
            metric_name=str(stage.stats.get("metric", "metric")),
        )
        paths.append(path)
    return paths


def _first_metric(report: CompressionReport) -> str | None:
    for stage in report.stages:
        if stage.task_metric:
            return next(iter(stage.task_metric))
    return None
