"""The Pareto front of a search's candidates, and its plot (a PNG, from the stats alone)."""

from __future__ import annotations

import math

from graphopt.search.pareto import cost_key, pareto_front, pareto_plot

CANDIDATES = [
    {"iteration": 1, "group": "a", "macs": 0.9, "latency": 0.8, "metric": 0.95},
    {"iteration": 1, "group": "b", "macs": 0.9, "latency": 0.9, "metric": 0.99},
    {"iteration": 1, "group": "c", "macs": 0.9, "latency": 0.9, "metric": 0.90},
    {"iteration": 2, "group": "a", "macs": 0.8, "latency": 0.7, "metric": 0.97},
    {"iteration": 2, "group": "c", "macs": 0.8, "latency": 0.6, "metric": 0.80},
    {"iteration": 2, "group": "d", "macs": 0.8, "latency": 0.75, "metric": math.nan},
]
CHOSEN = [
    {"iteration": 0, "group": None, "macs": 1.0, "latency": 1.0, "metric": 1.0},
    CANDIDATES[1],
    CANDIDATES[3],
]


def test_the_front_keeps_points_no_other_beats_in_both() -> None:
    front = pareto_front(CANDIDATES + CHOSEN)
    assert [(p["latency"], p["metric"]) for p in front] == [
        (0.6, 0.80),
        (0.7, 0.97),
        (0.9, 0.99),
        (1.0, 1.0),
    ]


def test_the_cost_axis_is_latency_only_when_every_point_has_one() -> None:
    assert cost_key(CANDIDATES) == "latency"
    assert cost_key([{"macs": 0.5, "metric": 1.0}, *CANDIDATES]) == "macs"
    assert [p["macs"] for p in pareto_front(CANDIDATES, "macs")] == [0.8, 0.9]


def test_pareto_plot_writes_a_png(tmp_path) -> None:
    out = pareto_plot(CANDIDATES, CHOSEN, tmp_path / "plots" / "pareto.png", metric_name="acc")
    assert out == tmp_path / "plots" / "pareto.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


def test_pareto_plot_accepts_a_search_that_tried_nothing(tmp_path) -> None:
    out = pareto_plot(
        [], [{"iteration": 0, "group": None, "macs": 1.0, "metric": 1.0}], tmp_path / "empty.png"
    )
    assert out.read_bytes()[:4] == b"\x89PNG"
