"""The sweep's one report: every variant's numbers, the Pareto front, the best per budget.

Each row is read from the variant's own ``report.json`` (the ``CompressionReport`` that
``graphopt run`` writes), never measured again: task metric, params, MACs, size, latency,
compression rates and speed-up on the recipe's first backend. The Pareto front is over three
objectives at once: the task metric (higher is better; the output cosine when there is no task
metric), latency on the first backend (MACs when no backend ran) and size; a variant is on it
when no other is at least as good in all three and better in one.

A budget (``sweep.budgets``) is checked on each variant with :func:`graphopt.budgets.check_budgets`
through a read-only view of its ``report.json``; the best variant meeting it is the one with the
highest metric, then the lowest latency. The chosen variant meets every budget (with none: the
best metric of all), and its model and report are what the sweep writes as its result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from graphopt.budgets import Requirement, check_budgets
from graphopt.sweep.executor import VariantResult

__all__ = ["SweepReport", "build_report"]

SCHEMA_VERSION = "1.0"
_COLUMNS = (
    ("variant", "name"),
    ("settings", "settings"),
    ("status", "status"),
    ("metric", "score"),
    ("params", "params"),
    ("MACs", "macs"),
    ("size MB", "size_mb"),
    ("latency ms", "latency_ms"),
    ("MACs a/a*", "macs_ratio"),
    ("size a/a*", "size_ratio"),
    ("speed-up", "speedup"),
    ("s", "seconds"),
)
_FILE_ONLY = {"status", "params", "macs", "seconds"}  # the terminal is narrow: sweep.md has them


class SweepReport:
    """Rows, front, budget winners and the chosen variant; written as sweep.json/.md/.png."""

    def __init__(
        self,
        rows: list[dict[str, Any]],
        budgets: list[dict[str, Any]],
        chosen: str | None,
        context: dict[str, Any],
    ) -> None:
        self.rows, self.budgets, self.chosen, self.context = rows, budgets, chosen, context

    @property
    def front(self) -> list[str]:
        return [r["name"] for r in self.rows if r.get("pareto")]

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(r["status"] == s for r in self.rows) for s in ("ok", "failed", "error")}
        return _finite(
            {
                "schema_version": SCHEMA_VERSION,
                **self.context,
                "counts": {**counts, "total": len(self.rows)},
                "variants": self.rows,
                "pareto_front": self.front,
                "budgets": self.budgets,
                "chosen": self.chosen,
            }
        )

    def write(self, folder: Path) -> list[Path]:
        json_path, md_path, png_path = (folder / f"sweep.{ext}" for ext in ("json", "md", "png"))
        json_path.write_text(json.dumps(self.to_dict(), indent=1, default=str, allow_nan=False))
        plot(
            self.rows,
            png_path,
            metric_name=self.context.get("metric_name") or "metric",
            chosen=self.chosen,
        )
        md_path.write_text(self.markdown(png_path.name))
        return [json_path, md_path, png_path]

    def print(self, console: Any) -> None:
        """The variants table on a rich console (the terminal's view of sweep.md)."""
        from rich.table import Table

        metric = self.context.get("metric_name") or "metric"
        table = Table(title=f"sweep: {len(self.rows)} variants, chosen {self.chosen or 'none'}")
        columns = [(t, k) for t, k in _COLUMNS if k not in _FILE_ONLY]
        for title, _ in columns:
            table.add_column(metric if title == "metric" else title, overflow="fold")
        table.add_column("Pareto")
        for row in self.rows:
            cells = [_cell(row.get(key)) for _, key in columns]
            if row["status"] != "ok":
                cells[2] = f"{row['status']}: {row.get('error') or ''}"
            table.add_row(*cells, "yes" if row.get("pareto") else "")
        console.print(table)
        for b in self.budgets:
            console.print(f"{b['budget']}: {b['best'] or 'no variant meets it'}")

    def markdown(self, plot_name: str | None = None) -> str:
        ctx = self.context
        lines = [
            f"# Sweep of {ctx.get('recipe_file', 'a recipe')}",
            "",
            f"{len(self.rows)} variants ({ctx.get('mode')}); metric: "
            f"{ctx.get('metric_name') or 'none'}; latency on {ctx.get('backend') or 'no backend'}.",
            "",
            "| " + " | ".join(title for title, _ in _COLUMNS) + " | Pareto |",
            "|" + "---|" * (len(_COLUMNS) + 1),
        ]
        for row in self.rows:
            cells = [_cell(row.get(key)) for _, key in _COLUMNS]
            if row["status"] != "ok":
                cells[3] = f"{row['status']}: {row.get('error') or ''}".replace("|", "\\|")
            lines.append("| " + " | ".join(cells) + f" | {'yes' if row.get('pareto') else ''} |")
        if self.budgets:
            lines += ["", "| budget | best variant | metric | latency ms |", "|---|---|---|---|"]
            for b in self.budgets:
                best = next((r for r in self.rows if r["name"] == b["best"]), {})
                lines.append(
                    f"| {b['budget']} | {b['best'] or 'none meets it'} | "
                    f"{_cell(best.get('metric'))} | {_cell(best.get('latency_ms'))} |"
                )
        chosen = next((r for r in self.rows if r["name"] == self.chosen), None)
        lines += [
            "",
            f"Chosen: **{self.chosen}** ({chosen['settings']}); its model and report are "
            "model.pt2, model.onnx and report.* in this folder."
            if chosen
            else "Chosen: none (no variant finished, or none meets every budget).",
        ]
        if plot_name:
            lines += ["", f"![metric vs latency vs size]({plot_name})"]
        return "\n".join(lines) + "\n"


def build_report(
    results: Sequence[VariantResult],
    requirements: Sequence[Requirement],
    context: dict[str, Any],
) -> SweepReport:
    rows = [_row(r) for r in results]
    metric_name = next((r["metric_name"] for r in rows if r.get("metric_name")), None)
    for row in rows:
        row["score"] = row["metric"] if metric_name else row.get("cosine")
    _mark_front(rows)
    ok = [(row, res) for row, res in zip(rows, results, strict=True) if row["status"] == "ok"]
    budgets = []
    for req in requirements:
        meeting = [row for row, res in ok if all(c.passed for c in _check(res, [req]))]
        best = _best(meeting)
        budgets.append({"budget": str(req), "best": best["name"] if best else None})
    everything = [row for row, res in ok if all(c.passed for c in _check(res, requirements))]
    chosen = _best(everything)
    backend = next((r["backend"] for r in rows if r.get("backend")), None)
    return SweepReport(
        rows,
        budgets,
        chosen["name"] if chosen else None,
        {**context, "metric_name": metric_name or ("cosine" if ok else None), "backend": backend},
    )


def _row(result: VariantResult) -> dict[str, Any]:
    variant = result.variant
    row: dict[str, Any] = {
        "name": variant.name,
        "key": variant.key,
        "settings": variant.label,
        "assignments": variant.assignments,
        "status": result.status,
        "error": result.error,
        "seconds": result.seconds,
        "cached": result.cached,
        "folder": str(result.folder) if result.folder else None,
    }
    report = result.report
    if result.status != "ok" or not report:
        return row
    gem = {g["metric"]: g for g in report.get("gem", [])}
    latency = (report.get("latency") or [{}])[0]
    compressed = (report.get("task_metric") or {}).get("compressed") or {}
    original = (report.get("task_metric") or {}).get("original") or {}
    name = next(iter(compressed), None)
    row.update(
        metric_name=name,
        metric=compressed.get(name) if name else None,
        metric_drop=(original[name] - compressed[name]) if name in original else None,
        params=gem.get("params", {}).get("compressed"),
        macs=gem.get("macs", {}).get("compressed"),
        size_mb=(gem.get("size_bytes", {}).get("compressed") or 0) / 1e6,
        params_ratio=gem.get("params", {}).get("compression_rate"),
        macs_ratio=gem.get("macs", {}).get("compression_rate"),
        size_ratio=gem.get("size_bytes", {}).get("compression_rate"),
        backend=latency.get("backend"),
        latency_ms=latency.get("compressed_ms"),
        original_latency_ms=latency.get("original_ms"),
        speedup=latency.get("speedup"),
        cosine=(report.get("fidelity") or {}).get("cosine"),
        report_status=report.get("status"),
    )
    return row


def _check(result: VariantResult, requirements: Sequence[Requirement]) -> list[Any]:
    """``check_budgets`` on a view of ``report.json`` with the attributes it reads."""
    report = result.report or {}
    gem = report.get("gem", [])
    by_name = {g["metric"]: g for g in gem}
    compressed = SimpleNamespace(
        **{k: by_name.get(k, {}).get("compressed") or 0 for k in ("size_bytes", "params", "macs")}
    )
    latencies = [
        SimpleNamespace(
            backend=lat["backend"],
            speedup=lat.get("speedup") or math.inf,
            compressed_ms=lat["compressed_ms"],
        )
        for lat in report.get("latency", [])
    ]
    rows = [{**g, "compression_rate": g.get("compression_rate") or math.inf} for g in gem]
    view = SimpleNamespace(
        gem_rows=lambda: rows,
        compressed=compressed,
        fidelity=report.get("fidelity"),
        latencies=latencies,
        task_metric=report.get("task_metric"),
    )
    return list(check_budgets(view, requirements))  # type: ignore[arg-type]


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Highest score (metric, else cosine), then lowest latency, then smallest."""
    if not rows:
        return None
    return min(
        rows,
        key=lambda r: (
            -_num(r.get("score"), -math.inf),
            _num(r.get("latency_ms"), math.inf),
            _num(r.get("size_mb"), math.inf),
        ),
    )


def _mark_front(rows: list[dict[str, Any]]) -> None:
    """``pareto: True`` on non-dominated ok rows: score up, latency (else MACs) and size down."""
    cost = (
        "latency_ms"
        if all(r.get("latency_ms") is not None for r in rows if r["status"] == "ok")
        else "macs"
    )
    points = [
        (
            r,
            (
                -_num(r.get("score"), -math.inf),
                _num(r.get(cost), math.inf),
                _num(r.get("size_mb"), math.inf),
            ),
        )
        for r in rows
        if r["status"] == "ok"
    ]
    for row, p in points:
        row["pareto"] = not any(
            all(a <= b for a, b in zip(q, p, strict=True)) and q != p for _, q in points
        )


def plot(
    rows: Sequence[dict[str, Any]], path: Path, *, metric_name: str, chosen: str | None = None
) -> Path:
    """Metric vs latency, marker area by size; the front joined, the chosen starred, the
    failed left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [r for r in rows if r["status"] == "ok" and r.get("score") is not None]
    cost = "latency_ms" if all(r.get("latency_ms") is not None for r in ok) else "macs"
    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if ok:
        biggest = max(_num(r.get("size_mb"), 0.0) for r in ok) or 1.0
        ax.scatter(
            [r[cost] for r in ok],
            [r["score"] for r in ok],
            s=[30 + 300 * _num(r.get("size_mb"), 0.0) / biggest for r in ok],
            c=["tab:blue" if r.get("pareto") else "tab:gray" for r in ok],
            alpha=0.7,
        )
        for r in ok:
            ax.annotate(r["name"], (r[cost], r["score"]), textcoords="offset points", xytext=(5, 5))
        front = sorted((r for r in ok if r.get("pareto")), key=lambda r: r[cost])
        ax.plot(
            [r[cost] for r in front],
            [r["score"] for r in front],
            "-",
            color="tab:blue",
            label="Pareto front (metric, latency, size)",
        )
        for r in ok:
            if r["name"] == chosen:
                ax.scatter([r[cost]], [r["score"]], marker="*", s=250, c="tab:red", label="chosen")
        ax.legend(loc="best")
    ax.set_xlabel("latency (ms, first backend)" if cost == "latency_ms" else "MACs")
    ax.set_ylabel(metric_name)
    ax.set_title("sweep: every variant (marker area: model size)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _num(value: Any, default: float) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else default


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
