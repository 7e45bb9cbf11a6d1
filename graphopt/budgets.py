"""Budgets: what a compressed model must reach for a deployment job to pass.

A recipe's ``require:`` (or ``graphopt run --require``) lists conditions such as::

    require:
      - accuracy_drop <= 1.0        # task metric points lost (original − compressed)
      - speedup.onnxruntime >= 2.5  # s/s* on that backend
      - size_mb <= 5
      - macs_ratio >= 3             # a/a* of the MACs
      - cosine >= 0.999             # output cosine of compressed vs original

They are checked after the run; ``graphopt run`` prints a pass/fail table, writes it into the
report and exits with status 3 when any budget fails (the artifacts are still written and
marked failing). A metric name graphopt does not know, or a backend the recipe does not run,
is a recipe error when the recipe is loaded, before any work.

Metric names (``NAME`` a task metric's key, ``BACKEND`` a backend of the run):

==========================  ============================================================
``metric_drop[.NAME]``      original − compressed task metric (``accuracy_drop`` alias)
``metric[.NAME]``           the compressed model's task metric
``speedup.BACKEND``         s/s*: original latency / compressed latency
``latency_ms.BACKEND``      the compressed model's median latency
``size_mb``, ``params``,    the compressed model's size (MB = 10⁶ bytes), parameters, MACs
``macs``
``size_ratio``,             a/a*: original / compressed
``params_ratio``,
``macs_ratio``
``cosine``,                 fidelity of the compressed outputs vs the original's on the
``relative_error``          example inputs (``max|y*−y| / max|y|``)
==========================  ============================================================
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from graphopt.errors import RecipeError

if TYPE_CHECKING:
    from graphopt.report import CompressionReport

__all__ = ["BudgetCheck", "Requirement", "check_budgets", "parse_requirements"]

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}
_SYNTAX = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+|inf)\s*$")
_PLAIN = {"size_mb", "params", "macs", "size_ratio", "params_ratio", "macs_ratio"}
_FIDELITY = {"cosine", "relative_error"}
_TASK = {"metric", "metric_drop", "accuracy_drop"}
_PER_BACKEND = {"speedup", "latency_ms"}


@dataclass(frozen=True)
class Requirement:
    """``metric op threshold``, e.g. ``speedup.onnxruntime >= 2.5``."""

    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class BudgetCheck:
    """One requirement after the run: the measured value and whether it held."""

    requirement: Requirement
    value: float | None
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirement": str(self.requirement),
            "metric": self.requirement.metric,
            "op": self.requirement.op,
            "threshold": self.requirement.threshold,
            "value": self.value,
            "passed": self.passed,
            "note": self.note,
        }


def parse_requirements(
    items: Any,
    *,
    backends: Sequence[str] | None = None,
    has_task_metric: bool | None = None,
    where: str = "require",
) -> tuple[Requirement, ...]:
    """Parse ``["size_mb <= 5", …]`` (or ``{size_mb: "<= 5"}``); unknown names are errors.

    ``backends`` (names the run measures) and ``has_task_metric`` check, when given, that a
    requirement can be measured at all: a budget that cannot be checked is a recipe error.
    """
    if isinstance(items, dict):
        items = [f"{k} {v}" for k, v in items.items()]
    elif isinstance(items, str):
        items = [items]
    if not isinstance(items, list):
        raise RecipeError(f"{where} must be a list such as ['size_mb <= 5'], got {items!r}")
    return tuple(
        _parse_one(item, backends, has_task_metric, f"{where}[{i}]") for i, item in enumerate(items)
    )


def _parse_one(
    item: object, backends: Sequence[str] | None, has_task_metric: bool | None, where: str
) -> Requirement:
    match = _SYNTAX.match(item) if isinstance(item, str) else None
    if match is None:
        raise RecipeError(
            f"{where}: {item!r} is not 'metric op number' (e.g. 'speedup.onnxruntime >= 2.5')"
        )
    metric, op, number = match.groups()
    try:
        threshold = float(number)
    except ValueError:
        raise RecipeError(f"{where}: {number!r} is not a number") from None
    if math.isnan(threshold):
        raise RecipeError(f"{where}: the threshold must be a number, got {number!r}")
    head, _, tail = metric.partition(".")
    if head in _PLAIN | _FIDELITY and not tail:
        pass
    elif head in _TASK:
        if has_task_metric is False:
            raise RecipeError(
                f"{where}: {metric!r} needs a task metric: give the recipe 'evaluate' or 'data'"
            )
    elif head in _PER_BACKEND and tail:
        if backends is not None and tail not in backends:
            known = ", ".join(backends) or "none"
            raise RecipeError(
                f"{where}: {metric!r} names backend {tail!r}, which the run does not measure "
                f"(backends: {known})"
            )
    else:
        raise RecipeError(
            f"{where}: unknown metric {metric!r}; known: metric_drop[.NAME], accuracy_drop, "
            "metric[.NAME], speedup.BACKEND, latency_ms.BACKEND, size_mb, params, macs, "
            "size_ratio, params_ratio, macs_ratio, cosine, relative_error"
        )
    return Requirement(metric, op, threshold)


def check_budgets(
    report: CompressionReport, requirements: Iterable[Requirement]
) -> tuple[BudgetCheck, ...]:
    """Measure every requirement on ``report``; a value that cannot be measured fails."""
    checks = []
    for req in requirements:
        value, note = _measure(report, req.metric)
        if value is None or math.isnan(value):
            checks.append(BudgetCheck(req, value, False, note or "not measured"))
        else:
            checks.append(BudgetCheck(req, value, _OPERATORS[req.op](value, req.threshold), note))
    return tuple(checks)


def _measure(report: CompressionReport, metric: str) -> tuple[float | None, str]:
    head, _, tail = metric.partition(".")
    gem = {row["metric"]: row for row in report.gem_rows()}
    if head == "size_mb":
        return report.compressed.size_bytes / 1e6, ""
    if head in ("params", "macs"):
        return float(getattr(report.compressed, head)), ""
    if head.endswith("_ratio"):
        key = {"size": "size_bytes", "params": "params", "macs": "macs"}[head[: -len("_ratio")]]
        return float(gem[key]["compression_rate"]), ""
    if head in _FIDELITY:
        value = (report.fidelity or {}).get(head)
        return (None, "no fidelity measured") if value is None else (float(value), "")
    if head in _PER_BACKEND:
        for lat in report.latencies:
            if lat.backend == tail:
                return (lat.speedup if head == "speedup" else lat.compressed_ms), ""
        return None, f"backend {tail!r} was not measured"
    return _task_value(report, head, tail)


def _task_value(report: CompressionReport, head: str, name: str) -> tuple[float | None, str]:
    if not report.task_metric:
        return None, "no task metric was measured"
    original, compressed = report.task_metric["original"], report.task_metric["compressed"]
    if not name:
        if not compressed:
            return None, "the task metric is empty"
        name = next(iter(compressed))
    if name not in compressed or name not in original:
        return None, f"the task metric has no {name!r} (it has {', '.join(compressed)})"
    if head == "metric":
        return compressed[name], name
    return original[name] - compressed[name], name
