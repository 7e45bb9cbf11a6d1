"""The report's data: what was measured, as one frozen value, and how it is written."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from graphopt.analysis import ModelStats
from graphopt.budgets import BudgetCheck
from graphopt.pass_manager import StageReport

__all__ = [
    "SCHEMA_VERSION",
    "BackendLatency",
    "CompressionReport",
    "artifact_hashes",
    "ratio",
    "report_schema",
]

SCHEMA_VERSION = "1.0"
_GEM = ("params", "macs", "size_bytes", "peak_activation_bytes")


@dataclass(frozen=True)
class BackendLatency:
    """Original vs compressed on one backend, timed interleaved in one run."""

    backend: str
    original_ms: float
    compressed_ms: float
    original_p90_ms: float
    compressed_p90_ms: float
    max_rel_diff: float  # compressed backend output vs compressed eager output
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return ratio(self.original_ms, self.compressed_ms)


def artifact_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every artifact in an output folder: the model files and the plots (the JSON
    and markdown reports and the log are written after, or still growing)."""
    from graphopt.provenance import sha256_file

    skip = {"report.json", "report.md", "graphopt.log"}
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name not in skip and not p.name.startswith(".")
    }


def report_schema() -> dict[str, Any]:
    """The JSON Schema of ``report.json`` (shipped with the package), for validators/editors."""
    from importlib import resources

    text = resources.files("graphopt").joinpath("schemas/report.schema.json").read_text("utf-8")
    return json.loads(text)


def ratio(original: float, compressed: float) -> float:
    return original / compressed if compressed else math.inf


@dataclass(frozen=True)
class CompressionReport:
    model: str
    original: ModelStats
    compressed: ModelStats
    stages: tuple[StageReport, ...]
    latencies: tuple[BackendLatency, ...] = ()
    task_metric: dict[str, dict[str, float]] | None = (
        None  # {"original": {...}, "compressed": {...}}
    )
    fidelity: dict[str, float] | None = None  # compressed vs original outputs: cosine, rel. error
    provenance: dict[str, Any] = field(default_factory=dict)
    budgets: tuple[BudgetCheck, ...] = ()

    @property
    def status(self) -> str:
        """``passed``/``failed`` when budgets were checked, else ``unchecked``."""
        if not self.budgets:
            return "unchecked"
        return "passed" if all(b.passed for b in self.budgets) else "failed"

    def gem_rows(self) -> list[dict[str, float | str]]:
        rows = []
        for key in _GEM:
            a, a_star = getattr(self.original, key), getattr(self.compressed, key)
            rows.append(
                {
                    "metric": key,
                    "original": a,
                    "compressed": a_star,
                    "compression_rate": ratio(a, a_star),
                    "index_space_saving": (a - a_star) / a_star if a_star else math.inf,
                }
            )
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "status": self.status,
            "model": self.model,
            "task_metric": self.task_metric,
            "gem": self.gem_rows(),
            "size_by_dtype": {
                "original": self.original.size_by_dtype,
                "compressed": self.compressed.size_by_dtype,
            },
            "latency": [{**asdict(lat), "speedup": lat.speedup} for lat in self.latencies],
            "stages": [asdict(s) for s in self.stages],
            "fidelity": self.fidelity,
            "budgets": [b.to_dict() for b in self.budgets],
            "provenance": self.provenance,
        }

    def summary(self, artifacts: dict[str, str] | None = None) -> dict[str, Any]:
        """The numbers a pipeline reads (``graphopt run --json``): status, budgets, gains;
        ``artifacts`` the written files' hashes (:func:`artifact_hashes`)."""
        gem = {row["metric"]: row for row in self.gem_rows()}
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                "status": self.status,
                "model": self.model,
                "budgets": [b.to_dict() for b in self.budgets],
                "task_metric": self.task_metric,
                "fidelity": self.fidelity,
                "size_mb": self.compressed.size_bytes / 1e6,
                "size_ratio": gem["size_bytes"]["compression_rate"],
                "macs_ratio": gem["macs"]["compression_rate"],
                "params_ratio": gem["params"]["compression_rate"],
                "speedup": {lat.backend: lat.speedup for lat in self.latencies},
                "latency_ms": {lat.backend: lat.compressed_ms for lat in self.latencies},
                "artifacts": artifacts or {},
            }
        )

    # ---- writers: the renderers live in markdown.py, terminal.py and plots.py ---------------
    def write(self, folder: Path) -> list[Path]:
        """Write report.json, report.md and report.png into ``folder``; returns the paths."""
        from graphopt.report.plots import search_plots, stage_plot

        folder.mkdir(parents=True, exist_ok=True)
        plot_path = folder / "report.png"
        stage_plot(self, plot_path)
        extra_plots = search_plots(self, folder)
        document = self.to_dict()
        document["provenance"] = {**self.provenance, "artifacts": artifact_hashes(folder)}
        json_path = folder / "report.json"
        json_path.write_text(
            json.dumps(_finite(document), indent=2, default=_json_default, allow_nan=False)
        )
        md_path = folder / "report.md"
        md_path.write_text(
            self.markdown(plot_name=plot_path.name, extra_plots=[p.name for p in extra_plots])
        )
        return [json_path, md_path, plot_path, *extra_plots]

    def markdown(self, *, plot_name: str | None = None, extra_plots: Sequence[str] = ()) -> str:
        from graphopt.report.markdown import render_markdown

        return render_markdown(self, plot_name=plot_name, extra_plots=extra_plots)

    def print(self, console: Any | None = None) -> None:
        from graphopt.report.terminal import print_report

        print_report(self, console)


def _finite(value: Any) -> Any:
    """NaN and ±inf as JSON ``null`` (JSON has no such numbers; readers choke on them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
