"""NetAdapt: prune the network one resource step at a time (Yang et al. 2018, ECCV).

Given a budget ``B = target · C₀`` on a resource ``C`` (latency measured on the deployment
backend, or MACs) and a step ``Δ`` (a fraction of ``C₀``), each iteration ``i``:

1. aims at ``aᵢ = max(B, Cᵢ₋₁ − Δᵢ · C₀)`` (``Δᵢ = Δ · decayⁱ⁻¹``; the last step stops at ``B``);
2. proposes one candidate per prunable group of the current model: the group's
   lowest-importance units, as few as reach ``aᵢ`` — counts that keep every layer a multiple
   of ``round_to`` channels and at least ``min_channels`` (``graphopt.pruning.policy``); the
   count is bracketed by regula falsi on resource against predicted MACs (see
   ``_fewest_reaching``: about three latency measurements per group); a group that cannot
   reach ``aᵢ`` alone proposes its largest valid removal;
3. optionally fine-tunes each candidate briefly, then scores it (a task metric, or the output
   fidelity of ``output_fidelity``: higher is better), here or, given a ``runner``, elsewhere
   (``graphopt.search.parallel``: as Ray tasks, in parallel);
4. keeps the best-scored candidate that reaches ``aᵢ`` (ties: the cheaper one), or, when none
   does, the cheapest one, and continues from it.

It stops when ``Cᵢ ≤ B`` (budget met), when no candidate lowers the resource any more (every
group frozen or at its limits) or after ``max_iterations``; then the last model is the closest
to the budget it found, and ``budget_met`` is False with a message saying why. NetAdapt picks
per iteration the layer whose pruning hurts accuracy least for the same resource saving, so
the search adapts to where the hardware spends its time instead of spreading cuts uniformly.
Unlike the paper, a candidate removes the *lowest-importance* units (the pruning package's
``importance``) rather than the smallest-norm filters of one layer, and a "layer" is a group
of coupled layers (a ResNet stage's residual channels are one candidate).

Each candidate is the current graph copied and cut with the pruning package's surgery; the
groups and importances are recomputed on the current graph every iteration (so they follow
fine-tuned weights), and removals are mapped back to the original unit numbering (the
``graphopt.pruning.units.UnitBook`` the ``prune`` pass keeps too), so the result is a
``PruningPlan`` that replays on a fresh trace (without the fine-tuned weights).
The resource comes from ``cost_fn(configuration, build, macs)``: the configuration key of
``graphopt.search.latency_cache``, a builder of the candidate (shapes propagated) that is only
called when the resource must be measured, and the candidate's MACs predicted by the pruning
``CostModel`` (equal to ``graphopt.analysis.analyze`` on the cut graph).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.fx import GraphModule

from graphopt.errors import GraphoptError
from graphopt.ir import settle
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.groups import PruningGroup, build_groups
from graphopt.pruning.importance import compute_importance
from graphopt.pruning.plan import PruningPlan
from graphopt.pruning.policy import CostModel, removal_order, valid_removals
from graphopt.pruning.surgery import apply_removals
from graphopt.pruning.units import UnitBook, channels_of
from graphopt.search.latency_cache import Configuration, configuration

__all__ = [
    "CandidateRunner",
    "CostFn",
    "Finetune",
    "ScoreFn",
    "SearchOptions",
    "SearchResult",
    "output_fidelity",
    "search",
]

CostFn = Callable[[Configuration, Callable[[], GraphModule], float], float]
ScoreFn = Callable[[GraphModule], float]
Finetune = Callable[[GraphModule], GraphModule]  # may train in place and return its argument


class CandidateRunner(Protocol):
    """Fine-tunes (when asked) and scores candidates elsewhere, e.g. as Ray tasks
    (``graphopt.search.parallel``); the search still proposes, builds and picks."""

    def add(self, gm: GraphModule) -> None:
        """Take one built candidate (the runner may start on it at once)."""

    def metrics(self) -> list[float]:
        """The metrics of the candidates added since the last call, in their order."""

    def weights(self, index: int) -> dict[str, torch.Tensor] | None:
        """Candidate ``index``'s tensors after its fine-tune (None without fine-tuning)."""


@dataclass(frozen=True)
class SearchOptions:
    """What to reach (``target`` × the first cost, ``kind``: "latency" or "macs") and how."""

    kind: str
    target: float
    step: float = 0.05
    step_decay: float = 1.0
    importance: str = "l2"
    round_to: int = 16
    min_channels: int = 1
    ignore: tuple[str, ...] = ()
    max_iterations: int = 50


@dataclass(frozen=True)
class SearchResult:
    """The adapted graph, its plan (original unit numbering) and the search's record.

    ``candidates``/``chosen`` are points ``{"iteration", "group", "macs", ["latency",]
    "metric", …}`` with resources as fractions of the original (the Pareto plot's input);
    ``chosen`` starts with the original model (iteration 0).
    """

    graph_module: GraphModule
    plan: PruningPlan
    budget_met: bool
    message: str
    cost_before: float
    cost_after: float
    macs_before: float
    macs_after: float
    metric_before: float
    metric_after: float
    channels: list[dict[str, Any]]
    trace: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    chosen: list[dict[str, Any]]
    frozen: list[dict[str, str]]


def search(
    gm: GraphModule,
    example_inputs: tuple[torch.Tensor, ...],
    cost_fn: CostFn,
    score_fn: ScoreFn,
    options: SearchOptions,
    *,
    finetune: Finetune | None = None,
    runner: CandidateRunner | None = None,
) -> SearchResult:
    """Run NetAdapt from ``gm`` (left unchanged: candidates are copies).

    With a ``runner``, each iteration's candidates are fine-tuned and scored by it (in
    parallel) instead of one after another here; the choice between them is the same.
    """
    groups0 = build_groups(build_channel_graph(gm, ignore=options.ignore))
    book = UnitBook.start(groups0)
    macs0 = CostModel(gm, groups0).original
    cost0 = cost_fn(configuration(groups0), lambda: gm, macs0)
    metric0 = score_fn(gm)
    here = _Point(gm, cost0, macs0, metric0)
    chosen = [_record(0, None, here, cost0, macs0, options.kind)]
    trace: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []
    goal = options.target * cost0
    step = options.step
    stop = ""
    while here.cost > goal:
        if len(trace) >= options.max_iterations:
            stop = "iterations"
            break
        iteration = len(trace) + 1
        aim = max(goal, here.cost - step * cost0)
        groups = build_groups(build_channel_graph(here.gm, ignore=options.ignore))
        mismatch = book.mismatch(groups)
        if mismatch is not None:
            raise GraphoptError(
                f"iteration {iteration}: {mismatch}; the groups changed other than by pruning "
                "(a fine-tune may change weights, but not layers)"
            )
        if runner is None:
            tried = _candidates(
                here, groups, aim, cost_fn, score_fn, options, example_inputs, finetune
            )
        else:
            tried = _candidates_by(runner, here, groups, aim, cost_fn, options, example_inputs)
        candidates.extend(_record(iteration, p.group, p, cost0, macs0, options.kind) for p in tried)
        best = max(tried, key=_Point.key, default=None)
        if best is None or best.cost >= here.cost:
            stop = "exhausted"
            break
        settle(best.gm, tuple(example_inputs), who="adapt")
        book.record({best.group.id: best.units})
        here = best
        chosen.append(_record(iteration, best.group, best, cost0, macs0, options.kind))
        trace.append({**chosen[-1], "aim": aim / cost0, "step": step, "candidates": len(tried)})
        step *= options.step_decay
    met = here.cost <= goal
    plan = book.plan(ignore=options.ignore, source=gm.meta.get("graphopt_source_class", ""))
    return SearchResult(
        graph_module=here.gm,
        plan=plan,
        budget_met=met,
        message=_message(met, stop, options, here.cost / cost0, len(trace), groups0),
        cost_before=cost0,
        cost_after=here.cost,
        macs_before=macs0,
        macs_after=here.macs,
        metric_before=metric0,
        metric_after=here.metric,
        channels=book.channels(),
        trace=trace,
        candidates=candidates,
        chosen=chosen,
        frozen=book.frozen(),
    )


def output_fidelity(reference: GraphModule, batches: Iterable[tuple[torch.Tensor, ...]]) -> ScoreFn:
    """Score = mean cosine similarity of a model's outputs with ``reference``'s, per batch.

    All floating outputs of a batch are flattened into one vector; 1.0 means the same outputs
    up to scale. A cheap sensitivity estimate when no task metric is given.
    """
    data = [tuple(b) for b in batches]
    expected = [_flat_outputs(reference, b) for b in data]

    def score(gm: GraphModule) -> float:
        sims = [_cosine(_flat_outputs(gm, b), ref) for b, ref in zip(data, expected, strict=True)]
        return sum(sims) / len(sims)

    return score


# --------------------------------------------------------------------------- internals


@dataclass(eq=False)
class _Point:
    """A model on the search path or a candidate: resource, MACs, metric."""

    gm: GraphModule | None  # None once the search no longer needs the model
    cost: float
    macs: float
    metric: float = float("nan")
    group: PruningGroup | None = None
    units: tuple[int, ...] = ()
    meets: bool = True

    def key(self) -> tuple:
        """Higher is better: reaching the aim first, then the metric, then a lower cost."""
        metric = self.metric if self.metric == self.metric else -math.inf  # NaN: worst
        return (self.meets, metric if self.meets else -self.cost, -self.cost)


def _candidates(
    here: _Point,
    groups: Sequence[PruningGroup],
    aim: float,
    cost_fn: CostFn,
    score_fn: ScoreFn,
    options: SearchOptions,
    inputs: tuple[torch.Tensor, ...],
    finetune: Finetune | None,
) -> list[_Point]:
    """One iteration's candidates, one per group that can still lose units, scored.

    Only the models of the best so far and of the one being built are kept alive (a copy of
    the model each); the others' points keep their numbers.
    """
    scores, _ = compute_importance(here.gm, groups, options.importance, example_inputs=inputs)
    model = CostModel(here.gm, groups)
    points: list[_Point] = []
    best: _Point | None = None
    for g in groups:
        point = _propose(here, groups, g, scores[g.id], model, aim, cost_fn, options, inputs)
        if point is None:
            continue
        if finetune is not None:
            point.gm = finetune(point.gm)
        point.metric = float(score_fn(point.gm))
        point.meets = point.cost <= aim
        points.append(point)
        if best is None or point.key() > best.key():
            if best is not None:
                best.gm = None
            best = point
        else:
            point.gm = None
    return points


def _candidates_by(
    runner: CandidateRunner,
    here: _Point,
    groups: Sequence[PruningGroup],
    aim: float,
    cost_fn: CostFn,
    options: SearchOptions,
    inputs: tuple[torch.Tensor, ...],
) -> list[_Point]:
    """``_candidates`` with the fine-tune and score done by ``runner``.

    The same proposals in the same order, the same key and tie-break (``max`` keeps the first
    of equal ones, as the sequential loop's strict ``>`` does). Only the best is kept as a
    model: rebuilt from its units, with its fine-tuned weights when there are some.
    """
    scores, _ = compute_importance(here.gm, groups, options.importance, example_inputs=inputs)
    model = CostModel(here.gm, groups)
    points: list[_Point] = []
    for g in groups:
        point = _propose(here, groups, g, scores[g.id], model, aim, cost_fn, options, inputs)
        if point is None:
            continue
        runner.add(point.gm)
        point.gm = None
        points.append(point)
    if not points:
        return points
    for point, metric in zip(points, runner.metrics(), strict=True):
        point.metric, point.meets = float(metric), point.cost <= aim
    index = max(range(len(points)), key=lambda i: points[i].key())
    best = points[index]
    units = list(best.units)
    best.gm = _Builder(here.gm, groups, best.group.id, units, inputs).get(len(units))
    weights = runner.weights(index)
    if weights is not None:
        with torch.no_grad():
            for name, tensor in [*best.gm.named_parameters(), *best.gm.named_buffers()]:
                tensor.copy_(weights[name])
    return points


def _propose(
    here: _Point,
    groups: Sequence[PruningGroup],
    group: PruningGroup,
    scores: torch.Tensor,
    model: CostModel,
    aim: float,
    cost_fn: CostFn,
    options: SearchOptions,
    inputs: tuple[torch.Tensor, ...],
) -> _Point | None:
    """The fewest lowest-scored units of ``group`` whose removal reaches ``aim``, as a model."""
    order = removal_order(group, scores)
    counts = valid_removals(group, order, options.round_to, options.min_channels)[1:]
    if not counts:
        return None
    macs = _predicted_macs(model, group.id, order, counts)
    builder = _Builder(here.gm, groups, group.id, order, inputs)
    measured: dict[int, float] = {}

    def cost_of(i: int) -> float:
        if i not in measured:
            key = configuration(groups, {group.id: order[: counts[i]]})

            def build() -> GraphModule:
                return builder.get(counts[i], settled=True)

            measured[i] = float(cost_fn(key, build, macs[i]))
        return measured[i]

    i = _fewest_reaching(cost_of, macs, here.cost, here.macs, aim)
    units = tuple(sorted(order[: counts[i]]))
    return _Point(builder.get(counts[i]), measured[i], macs[i], group=group, units=units)


def _predicted_macs(
    model: CostModel, gid: str, order: Sequence[int], counts: Sequence[int]
) -> list[float]:
    """The MACs after removing ``order[:r]`` for each ``r`` in ``counts`` (ascending)."""
    predicted, done, out = model.copy(), 0, []
    for r in counts:
        predicted.remove(gid, order[done:r])
        done = r
        out.append(predicted.total)
    return out


def _fewest_reaching(
    cost_of: Callable[[int], float],
    macs: Sequence[float],
    cost_now: float,
    macs_now: float,
    aim: float,
) -> int:
    """The smallest index whose cost reaches ``aim`` (the last one if none does).

    Cost falls with the count; it is measured (latency) or free (MACs). A bracket
    ``(lo, hi]`` holds the answer: ``lo`` misses the aim (``-1``: the current model), ``hi``
    reaches it. Each probe is where the line through the bracket's ends, with cost against
    MACs, crosses the aim (regula falsi), kept strictly inside the bracket: latency is close
    to affine in MACs, so a probe and its neighbour usually close the bracket, three
    measurements per group where bisection over 32 counts takes six.
    """
    hi = len(macs) - 1
    if cost_of(hi) > aim:
        return hi
    lo, lo_cost, lo_macs = -1, cost_now, macs_now
    while hi - lo > 1:
        hi_cost = cost_of(hi)
        slope = (hi_cost - lo_cost) / (macs[hi] - lo_macs) if macs[hi] != lo_macs else 0.0
        guess = next(
            (i for i in range(lo + 1, hi) if lo_cost + slope * (macs[i] - lo_macs) <= aim), hi
        )
        guess = min(max(guess, lo + 1), hi - 1)
        if cost_of(guess) <= aim:
            hi = guess
        else:
            lo, lo_cost, lo_macs = guess, cost_of(guess), macs[guess]
    return hi


class _Builder:
    """Cuts ``order[:r]`` of one group from a copy of ``gm``; keeps the last model built."""

    def __init__(self, gm: GraphModule, groups, gid: str, order: list[int], inputs) -> None:
        self.gm, self.groups, self.gid, self.order, self.inputs = gm, groups, gid, order, inputs
        self.count: int | None = None
        self.model: GraphModule | None = None
        self.settled = False

    def get(self, r: int, *, settled: bool = False) -> GraphModule:
        if self.count != r:
            self.model = None  # free the previous copy before making the next one
            with warnings.catch_warnings():  # torch's pytree deprecation noise on deepcopy
                warnings.filterwarnings("ignore", category=FutureWarning)
                model = copy.deepcopy(self.gm)
            apply_removals(model, self.groups, {self.gid: self.order[:r]})
            model.graph.lint()
            model.recompile()
            self.count, self.model, self.settled = r, model, False
        if settled and not self.settled:  # the cost model and a latency export read shapes
            settle(self.model, tuple(self.inputs), who="adapt")
            self.settled = True
        return self.model


def _record(
    iteration: int, group: PruningGroup | None, p: _Point, cost0: float, macs0: float, kind: str
) -> dict[str, Any]:
    row: dict[str, Any] = {"iteration": iteration, "group": group.id if group else None}
    if group is not None:
        row["units_removed"] = len(p.units)
        row["channels_before"] = group.channels
        row["channels_after"] = group.channels - channels_of(group, p.units)
    row["macs"] = round(p.macs / max(macs0, 1e-12), 6)
    if kind == "latency":
        row["latency"] = round(p.cost / cost0, 6)
    row["metric"] = p.metric
    if group is not None:
        row["meets_step"] = p.meets
    return row


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity in [-1, 1]; exactly 1 for equal outputs (no rounding to 1 ± 4e-16)."""
    if a.shape == b.shape and torch.equal(a, b):
        return 1.0
    value = torch.nn.functional.cosine_similarity(a, b, dim=0).item()
    return max(-1.0, min(1.0, value))


def _flat_outputs(gm: GraphModule, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    with torch.no_grad():
        out = gm(*inputs)
    leaves = [t for t in torch.utils._pytree.tree_leaves(out) if torch.is_tensor(t)]
    return torch.cat([t.detach().double().flatten() for t in leaves if t.is_floating_point()])


def _message(
    met: bool,
    stop: str,
    options: SearchOptions,
    reached: float,
    iterations: int,
    groups0: Sequence[PruningGroup],
) -> str:
    target = f"target_{options.kind}={options.target:g}"
    if met:
        return f"{target} met: {reached:.3g} of the original {options.kind} in {iterations} steps"
    head = (
        f"{target} not met: the closest result keeps {reached:.3g} of the original "
        f"{options.kind} after {iterations} steps"
    )
    if stop == "iterations":
        return f"{head}; max_iterations={options.max_iterations} ran out: raise it or step"
    frozen = [g for g in groups0 if g.frozen]
    example = f" (e.g. {frozen[0].id}: {frozen[0].frozen_reasons[0]})" if frozen else ""
    return (
        f"{head}; no candidate lowers it further: {len(frozen)} of {len(groups0)} groups are "
        f"frozen{example}, the others are at round_to={options.round_to} / min_channels="
        f"{options.min_channels}. Raise the target, lower round_to or min_channels, or "
        "ignore fewer layers"
    )
