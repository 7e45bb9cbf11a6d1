"""report.md: a model card a reviewer can paste, then every number and every pass's tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from graphopt.report.text import human, metric_text, stage_notes, stage_tables, value_text

if TYPE_CHECKING:
    from graphopt.report.model import CompressionReport

__all__ = ["model_card", "render_markdown"]

_TABLE_ROWS = 15


def render_markdown(
    report: CompressionReport, *, plot_name: str | None = None, extra_plots: Sequence[str] = ()
) -> str:
    """report.md: the model card, TRM, GEM, DM, the stages and every table a pass reported."""
    lines = [f"# graphopt report: {report.model}", "", *model_card(report), ""]
    if report.task_metric:
        lines += [
            "## Task metric (TRM)",
            "",
            "| metric | original | compressed | change |",
            "|---|---:|---:|---:|",
        ]
        for name, value in report.task_metric["original"].items():
            new = report.task_metric["compressed"].get(name, math.nan)
            lines.append(f"| {name} | {value:.4f} | {new:.4f} | {new - value:+.4f} |")
        lines.append("")
    lines += [
        "## Efficiency (GEM)",
        "",
        "| metric | original | compressed | a/a* | (a−a*)/a* |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report.gem_rows():
        lines.append(
            f"| {row['metric']} | {human(row['original'])} | "
            f"{human(row['compressed'])} | {row['compression_rate']:.3f} | "
            f"{row['index_space_saving']:.3f} |"
        )
    if report.latencies:
        lines += [
            "",
            "## Latency (DM), interleaved in one run",
            "",
            "| backend | original ms | compressed ms | speed-up s/s* | p90 orig / comp | "
            "max rel diff | notes |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for lat in report.latencies:
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
    for s in report.stages:
        lines.append(
            f"| {s.name} | {s.exact} | {s.modified} | {s.seconds:.2f} | "
            f"{human(s.params)} | {human(s.macs)} | {human(s.size_bytes)}B | "
            f"{s.relative_error:.2e} | {metric_text(s.task_metric)} | {stage_notes(s)} |"
        )
    for stage in report.stages:
        for key, rows in stage_tables(stage).items():
            lines += _table_markdown(f"{stage.name}: {key}", rows)
    if plot_name:
        lines += ["", f"![latency and size per stage]({plot_name})"]
    for name in extra_plots:
        lines += ["", f"![candidates of the search and the chosen path]({name})"]
    return "\n".join(lines) + "\n"


def _table_markdown(title: str, rows: list[dict[str, Any]]) -> list[str]:
    """One pass table: its first rows, the columns whose values are short scalars."""
    columns = [
        key
        for key in dict.fromkeys(k for row in rows for k in row)
        if all(isinstance(row.get(key), (str, int, float, bool, type(None))) for row in rows)
    ]
    if not columns:
        return []
    shown = rows[:_TABLE_ROWS]
    more = f" (first {len(shown)} of {len(rows)})" if len(rows) > len(shown) else ""
    lines = ["", f"## {title}{more}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in shown:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value).replace("|", "\\|")


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
        f"MACs {human(report.original.macs)} → {human(report.compressed.macs)} "
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
            f"| `{b.requirement}` | {value_text(b.value)} | "
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
