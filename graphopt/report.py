"""The compression report: original vs compressed, per stage and per backend.

Metrics (names as in the model-compression literature):
- TRM, task metric: whatever the user's evaluation function returns, for both models;
- GEM, general efficiency metrics: params, MACs, model size in bytes, peak activation memory;
- DM, deployment metric: median latency per backend, measured interleaved in one run;
- compression rate a/a* and index-space saving (a − a*)/a* for every GEM (a original, a*
  compressed), and speed-up s/s* for every backend.
Written as a terminal table, ``report.json`` and ``report.md`` with ``report.png``.

``report.json`` is versioned (``schema_version``; the JSON Schema ships as
``graphopt/schemas/report.schema.json``) and carries the provenance of the run (versions,
machine, recipe and input hashes, artifact hashes, start and end time) and the budgets checked
(``status``: ``passed``, ``failed`` or ``unchecked``). ``report.md`` opens with a model card: a
short summary a reviewer can paste into a pull request.
"""

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

    # ---- writers ---------------------------------------------------------------------------
    def write(self, folder: Path) -> list[Path]:
        """Write report.json, report.md and report.png into ``folder``; returns the paths."""
        folder.mkdir(parents=True, exist_ok=True)
        plot_path = folder / "report.png"
        self._plot(plot_path)
        extra_plots = self._search_plots(folder)
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

    def _search_plots(self, folder: Path) -> list[Path]:
        """A Pareto plot (metric vs cost of every candidate tried) per search stage."""
        from graphopt.search.pareto import pareto_plot

        paths = []
        for index, stage in enumerate(self.stages):
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

    def markdown(self, *, plot_name: str | None = None, extra_plots: Sequence[str] = ()) -> str:
        lines = [f"# graphopt report: {self.model}", "", *model_card(self), ""]
        if self.task_metric:
            lines += [
                "## Task metric (TRM)",
                "",
                "| metric | original | compressed | change |",
                "|---|---:|---:|---:|",
            ]
            for name, value in self.task_metric["original"].items():
                new = self.task_metric["compressed"].get(name, math.nan)
                lines.append(f"| {name} | {value:.4f} | {new:.4f} | {new - value:+.4f} |")
            lines.append("")
        lines += [
            "## Efficiency (GEM)",
            "",
            "| metric | original | compressed | a/a* | (a−a*)/a* |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in self.gem_rows():
            lines.append(
                f"| {row['metric']} | {_human(row['original'])} | "
                f"{_human(row['compressed'])} | {row['compression_rate']:.3f} | "
                f"{row['index_space_saving']:.3f} |"
            )
        if self.latencies:
            lines += [
                "",
                "## Latency (DM), interleaved in one run",
                "",
                "| backend | original ms | compressed ms | speed-up s/s* | p90 orig / comp | "
                "max rel diff | notes |",
                "|---|---:|---:|---:|---:|---:|---|",
            ]
            for lat in self.latencies:
                notes = ", ".join(
                    f"{k}={v}"
                    for k, v in lat.info.items()
                    if k in ("tuned", "trials", "exporter", "note")
                )
                lines.append(
                    f"| {lat.backend} | {lat.original_ms:.3f} | {lat.compressed_ms:.3f} | "
                    f"{lat.speedup:.3f} | {lat.original_p90_ms:.3f} / "
                    f"{lat.compressed_p90_ms:.3f} | {lat.max_rel_diff:.2e} | {notes} |"
                )
        lines += [
            "",
            "## Stages",
            "",
            "| stage | exact | modified | time s | params | MACs | size | rel. error | task metric "
            "| notes |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for s in self.stages:
            lines.append(
                f"| {s.name} | {s.exact} | {s.modified} | {s.seconds:.2f} | "
                f"{_human(s.params)} | {_human(s.macs)} | {_human(s.size_bytes)}B | "
                f"{s.relative_error:.2e} | {_metric_text(s.task_metric)} | {_stage_notes(s)} |"
            )
        lines += _sensitivity_markdown(self.stages)
        lines += _channels_markdown(self.stages)
        if plot_name:
            lines += ["", f"![latency and size per stage]({plot_name})"]
        for name in extra_plots:
            lines += ["", f"![candidates of the search and the chosen path]({name})"]
        return "\n".join(lines) + "\n"

    def print(self, console: Any | None = None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        if not console.is_terminal:  # a pipe or a log: don't squeeze the tables into 80 columns
            console = Console(width=160, file=console.file)
        gem = Table(title=f"graphopt: {self.model}")
        for col in ("metric", "original", "compressed", "a/a*", "(a−a*)/a*"):
            gem.add_column(col, justify="left" if col == "metric" else "right")
        if self.task_metric:
            for name, value in self.task_metric["original"].items():
                new = self.task_metric["compressed"].get(name, math.nan)
                gem.add_row(f"TRM {name}", f"{value:.4f}", f"{new:.4f}", "", f"{new - value:+.4f}")
        for row in self.gem_rows():
            gem.add_row(
                str(row["metric"]),
                _human(row["original"]),
                _human(row["compressed"]),
                f"{row['compression_rate']:.3f}",
                f"{row['index_space_saving']:.3f}",
            )
        for lat in self.latencies:
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
        with_metric = any(s.task_metric for s in self.stages)
        for col in [*columns, *(["task metric"] if with_metric else []), "notes"]:
            stages.add_column(col)
        for s in self.stages:
            stages.add_row(
                s.name,
                str(s.modified),
                f"{s.seconds:.2f}",
                _human(s.params),
                _human(s.macs),
                f"{_human(s.size_bytes)}B",
                f"{s.relative_error:.2e}",
                *([_metric_text(s.task_metric)] if with_metric else []),
                _stage_notes(s, limit=3),
            )
        console.print(stages)

    def _plot(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (ax_size, ax_lat) = plt.subplots(1, 2, figsize=(11, 4))
        names = [s.name for s in self.stages]
        ax_size.bar(names, [s.size_bytes / 1e6 for s in self.stages], color="#4c72b0")
        ax_size.set_ylabel("model size (MB)")
        ax_macs = ax_size.twinx()
        ax_macs.plot(names, [s.macs / 1e6 for s in self.stages], "o-", color="#dd8452")
        ax_macs.set_ylabel("MMACs")
        ax_macs.set_ylim(bottom=0)
        ax_size.set_title("size and MACs per stage")
        ax_size.tick_params(axis="x", rotation=30)
        if self.latencies:
            backends = [lat.backend for lat in self.latencies]
            xs = range(len(backends))
            ax_lat.bar(
                [x - 0.2 for x in xs],
                [lat.original_ms for lat in self.latencies],
                0.4,
                label="original",
            )
            ax_lat.bar(
                [x + 0.2 for x in xs],
                [lat.compressed_ms for lat in self.latencies],
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


def model_card(report: CompressionReport) -> list[str]:
    """The summary a reviewer pastes into a pull request: budgets, what was done, the gains."""
    checks = report.budgets
    failed = [b for b in checks if not b.passed]
    if not checks:
        verdict = "**Budgets: none set**"
    elif failed:
        verdict = f"**Budgets: FAILED** ({len(failed)} of {len(checks)} missed)"
    else:
        verdict = f"**Budgets: passed** ({len(checks)} of {len(checks)})"
    steps = [s.name for s in report.stages if s.name != "capture"]
    done = " → ".join(steps) if steps else "capture only (no passes)"
    gem = {row["metric"]: row for row in report.gem_rows()}
    facts = []
    if report.task_metric:
        for name, before in report.task_metric["original"].items():
            after = report.task_metric["compressed"].get(name, math.nan)
            facts.append(f"{name} {before:.4g} → {after:.4g} ({after - before:+.3g})")
    facts.append(
        f"MACs {_human(report.original.macs)} → {_human(report.compressed.macs)} "
        f"(÷{gem['macs']['compression_rate']:.2f})"
    )
    size_rate = gem["size_bytes"]["compression_rate"]
    facts.append(
        f"size {report.original.size_bytes / 1e6:.2f} MB → "
        f"{report.compressed.size_bytes / 1e6:.2f} MB (÷{size_rate:.2f})"
    )
    facts += [
        f"{lat.backend} {lat.original_ms:.3f} → {lat.compressed_ms:.3f} ms (×{lat.speedup:.2f})"
        for lat in report.latencies
    ]
    if report.fidelity and math.isfinite(report.fidelity.get("cosine", math.nan)):
        facts.append(f"output cosine vs original {report.fidelity['cosine']:.5f}")
    lines = [f"> {verdict} · {done}", ">", f"> {'; '.join(facts)}."]
    if checks:
        lines += ["", "| budget | measured | result |", "|---|---:|---|"]
        lines += [
            f"| `{b.requirement}` | {_value_text(b.value)} | "
            f"{'pass' if b.passed else 'FAIL'}{f' ({b.note})' if b.note else ''} |"
            for b in checks
        ]
    prov = report.provenance
    if prov:
        ver = prov.get("versions", {})
        libs = ", ".join(f"{k} {v}" for k, v in ver.items() if v and k != "python")
        recipe = prov.get("recipe_sha256")
        lines += [
            "",
            f"<sub>{libs}; {prov.get('machine', {}).get('cpu', 'unknown CPU')}"
            + (f"; recipe sha256 {recipe[:12]}" if recipe else "")
            + f"; {prov.get('finished_at', '')}</sub>",
        ]
    return lines


def _value_text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _finite(value: Any) -> Any:
    """NaN and ±inf as JSON ``null`` (JSON has no such numbers; readers choke on them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _metric_text(metric: dict[str, float] | None) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in (metric or {}).items())


def _sensitivity_markdown(stages: tuple[StageReport, ...], top: int = 10) -> list[str]:
    """The most int8-sensitive layers of each quantize stage that measured them."""
    lines: list[str] = []
    for stage in stages:
        table = stage.stats.get("sensitivity") or []
        if not table:
            continue
        lines += [
            "",
            f"## Int8 sensitivity ({stage.name}): the {min(top, len(table))} most sensitive "
            f"of {len(table)} layers",
            "",
            "Output cosine vs float with only that layer in int8.",
            "",
            "| layer | type | cosine | 1 − cosine |",
            "|---|---|---:|---:|",
        ]
        lines += [
            f"| {r['layer']} | {r['type']} | {r['cosine']:.6f} | {r['error']:.2e} |"
            for r in table[:top]
        ]
    return lines


def _channels_markdown(stages: tuple[StageReport, ...]) -> list[str]:
    """The per-group channel counts a search stage chose (groups it changed)."""
    lines: list[str] = []
    for stage in stages:
        rows = [r for r in stage.stats.get("channels") or [] if r.get("before") != r.get("after")]
        if not rows:
            continue
        lines += [
            "",
            f"## Channels chosen ({stage.name}): {len(rows)} groups changed",
            "",
            "| group | before | after | kept |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['group']} | {r['before']} | {r['after']} | {r['ratio']:.2f} |" for r in rows
        ]
    return lines


def _stage_notes(stage: StageReport, *, limit: int | None = None) -> str:
    """The pass's scalar stats and its refusals; ``limit`` keeps the first few (terminal)."""
    simple = [(k, v) for k, v in stage.stats.items() if isinstance(v, (int, float, str))]
    notes = ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in simple[:limit]
    )
    refused = stage.stats.get("refused") or []
    if refused and limit is not None:  # the terminal: the count; the files list them
        notes += f"{', ' if notes else ''}refused {len(refused)}"
    elif refused:
        notes += (
            f"{', ' if notes else ''}refused {len(refused)}: "
            + "; ".join(f"{r['node']} ({r['reason']})" for r in refused[:3])
            + ("…" if len(refused) > 3 else "")
        )
    return notes


def _human(value: float | str) -> str:
    if isinstance(value, str):
        return value
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)
