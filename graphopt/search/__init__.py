"""Search over pruning configurations for a resource budget (NetAdapt, Yang et al. 2018).

- ``netadapt``: the iterative search: one candidate per pruning group per step, scored by a
  task metric or output fidelity, the best kept until the latency or MACs budget is met;
- ``latency_cache``: measured latency per channel configuration (each measured once);
- ``pareto``: the candidates' accuracy-vs-cost Pareto front and its plot;
- ``parallel``: an iteration's candidates fine-tuned and scored as Ray tasks;
- ``portable``: a GraphModule as picklable data, which is how a candidate reaches a task.

The ``adapt`` pass (``graphopt.passes.adapt``) runs the search inside a pipeline.
"""

from __future__ import annotations

from graphopt.search.latency_cache import Configuration, LatencyCache, configuration
from graphopt.search.netadapt import (
    SearchOptions,
    SearchResult,
    output_fidelity,
    search,
)
from graphopt.search.pareto import pareto_front, pareto_plot

__all__ = [
    "Configuration",
    "LatencyCache",
    "SearchOptions",
    "SearchResult",
    "configuration",
    "output_fidelity",
    "pareto_front",
    "pareto_plot",
    "search",
]
