"""The ``adapt`` pass: options, budgets on the zoo, latency via extras, refusals, fine-tuning."""

from __future__ import annotations

import itertools
import sys
import types

import pytest
import torch

from graphopt.capture import trace
from graphopt.errors import PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes.adapt import Adapt
from graphopt.passes.base import PassContext, get_pass, registered_passes
from graphopt.pruning import PruningPlan, apply_plan
from graphopt.zoo import get_model
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace
from tests.search.fakes import FakeLatency


def _run(gm, inputs, extras=None, **options):
    ctx = PassContext(example_inputs=tuple(inputs), extras=dict(extras or {}))
    result = PassManager([Adapt(**options)]).run(gm, inputs, context=ctx)
    return result.graph_module, result.stages[-1], result.stages[0]


def _assert_round_to(original, pruned, round_to: int) -> None:
    """Every layer whose output channels changed keeps a multiple of ``round_to``."""
    before = dict(original.named_parameters())
    changed = 0
    for key, p in pruned.named_parameters():
        if p.dim() >= 2 and p.shape[0] != before[key].shape[0]:
            assert p.shape[0] % round_to == 0, key
            changed += 1
    assert changed


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({}, "target_latency"),
        ({"target_latency": 0.5, "target_macs": 0.5}, "target_macs"),
        ({"target_macs": 0.0}, "target_macs"),
        ({"target_latency": 1.5}, "target_latency"),
        ({"target_macs": True}, "target_macs"),
        ({"target_macs": 0.5, "step": 0}, "step"),
        ({"target_macs": 0.5, "step": 1.0}, "step"),
        ({"target_macs": 0.5, "step_decay": 0}, "step_decay"),
        ({"target_macs": 0.5, "importance": "l3"}, "importance"),
        ({"target_macs": 0.5, "round_to": 0}, "round_to"),
        ({"target_macs": 0.5, "min_channels": 0}, "min_channels"),
        ({"target_macs": 0.5, "ignore": "fc"}, "ignore"),
        ({"target_macs": 0.5, "max_iterations": 0}, "max_iterations"),
        ({"target_macs": 0.5, "short_finetune_steps": -1}, "short_finetune_steps"),
        ({"target_macs": 0.5, "short_finetune_steps": 1.5}, "short_finetune_steps"),
    ],
)
def test_bad_options_are_refused_by_name(options, option) -> None:
    with pytest.raises(ValueError, match=option):
        Adapt(**options)


def test_registered_as_adapt_with_keyword_options() -> None:
    assert registered_passes()["adapt"] is Adapt
    p = get_pass("adapt", target_latency=0.4, ignore=["fc"])
    assert not p.exact and p.options()["ignore"] == ("fc",) and p.options()["round_to"] == 16
    with pytest.raises(RecipeError, match="step"):
        get_pass("adapt", target_macs=0.5, step=2)


def test_target_latency_without_a_latency_callable_is_a_pass_error() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    with pytest.raises(PassError, match=r"\[adapt\] needs ctx\.latency"):
        Adapt(target_latency=0.5).run(gm, PassContext(inputs))
    with pytest.raises(PassError, match=r"ctx\.latency must be"):
        Adapt(target_latency=0.5).run(gm, PassContext(inputs, extras={"latency": 0.01}))


def test_unmatched_ignore_and_bad_evaluate_are_pass_errors() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    with pytest.raises(PassError, match="ignore='conv9'"):
        Adapt(target_macs=0.5, ignore=["conv9"]).run(gm, PassContext(inputs))
    bad = PassContext(inputs, extras={"evaluate": lambda m: "good"})
    with pytest.raises(PassError, match="evaluate"):
        Adapt(target_macs=0.5, round_to=4).run(gm, bad)


# --------------------------------------------------------------------------- MACs budgets


def test_resnet18_meets_a_macs_budget_and_replays_from_its_plan() -> None:
    model, inputs = get_model("resnet18", input_shape=(1, 3, 64, 64))
    gm = trace(model, inputs)
    pruned, stage, first = _run(gm, inputs, target_macs=0.5, step=0.1)
    stats = stage.stats
    pruned.graph.lint()
    assert stage.modified and stats["budget_met"] and "met" in stats["message"]
    assert stage.macs <= 0.5 * first.macs and stats["macs_after"] == stage.macs
    assert stats["macs_fraction"] == pytest.approx(stage.macs / first.macs, abs=1e-6)
    _assert_round_to(gm, pruned, 16)
    for row in stats["channels"]:
        assert row["after"] == row["before"] or row["after"] % 16 == 0, row
    assert sum(row["after"] < row["before"] for row in stats["channels"]) >= 2
    trace_ = stats["trace"]
    assert [t["iteration"] for t in trace_] == list(range(1, len(trace_) + 1))
    assert all(a["macs"] > b["macs"] for a, b in itertools.pairwise(trace_))
    assert len(stats["candidates"]) >= len(trace_) * 10  # ~12 prunable groups per iteration
    assert stats["chosen"][0] == {"iteration": 0, "group": None, "macs": 1.0, "metric": 1.0}
    batch = torch.cat([inputs[0]] * 2)
    assert pruned(batch).shape == (2, 1000)  # runs, batch still dynamic
    replayed = apply_plan(trace(model, inputs), PruningPlan.from_dict(stats["plan"]))
    for (name, p), (_, q) in zip(
        pruned.named_parameters(), replayed.named_parameters(), strict=True
    ):
        assert p.shape == q.shape, name
    torch.testing.assert_close(replayed(*inputs), pruned(*inputs))


def test_mobilenet_v2_meets_a_macs_budget() -> None:
    model, inputs = get_model("mobilenet_v2", input_shape=(1, 3, 32, 32))
    gm = trace(model, inputs)
    pruned, stage, first = _run(gm, inputs, target_macs=0.7, step=0.3)
    pruned.graph.lint()
    assert stage.stats["budget_met"] and stage.macs <= 0.7 * first.macs
    assert stage.params < first.params
    _assert_round_to(gm, pruned, 16)
    assert pruned(*inputs).shape == model(*inputs).shape


def test_target_already_met_changes_nothing() -> None:
    _, gm, inputs = small_trace(models.SqueezeExcite)
    _pruned, stage, first = _run(gm, inputs, target_macs=1.0, round_to=4)
    assert not stage.modified and stage.stats["budget_met"] and stage.stats["iterations"] == 0
    assert stage.relative_error == 0 and stage.params == first.params


# --------------------------------------------------------------------------- latency budgets


def test_meets_a_latency_budget_measuring_each_configuration_once() -> None:
    _, gm, inputs = zoo_trace("resnet18")
    latency = FakeLatency()
    pruned, stage, _ = _run(gm, inputs, {"latency": latency}, target_latency=0.8, step=0.2)
    stats = stage.stats
    assert stats["cost"] == "latency" and stats["budget_met"]
    assert stats["latency_fraction"] <= 0.8
    assert latency(pruned, inputs) / latency(gm, inputs) == pytest.approx(
        stats["latency_fraction"], rel=1e-6
    )
    measured = latency.calls[:-2]
    assert len(measured) == stats["latency_measurements"] == len(set(measured))
    assert all(c["latency"] <= 1.0 for c in stats["candidates"])
    assert stats["chosen"][-1]["latency"] == stats["latency_fraction"]
    _assert_round_to(gm, pruned, 16)


def test_an_impossible_latency_budget_returns_the_closest_result() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    latency = FakeLatency(per_layer=1.0)  # the fixed per-layer cost dominates
    pruned, stage, _first = _run(gm, inputs, {"latency": latency}, target_latency=0.5, round_to=4)
    stats = stage.stats
    assert stage.modified and not stats["budget_met"]
    assert "not met" in stats["message"] and "closest" in stats["message"]
    assert 0.5 < stats["latency_fraction"] < 1.0
    assert {r["group"]: r["after"] for r in stats["channels"]} == {"conv1": 4, "conv2": 4}
    assert pruned(*inputs).shape == (2, 5)


def test_nothing_prunable_is_a_closest_result_not_an_error() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    _pruned, stage, _ = _run(gm, inputs, target_macs=0.5, round_to=4, ignore=["conv1", "conv2"])
    assert not stage.modified and not stage.stats["budget_met"]
    assert "3 of 3 groups are frozen" in stage.stats["message"]


# --------------------------------------------------------------------------- the score


def test_the_evaluate_callable_steers_the_search() -> None:
    _, gm, inputs = zoo_trace("resnet18")
    _, baseline, _ = _run(gm, inputs, target_macs=0.7, step=0.1)
    favourite = baseline.stats["trace"][0]["group"]  # fidelity's first choice
    weight = f"{favourite}.weight"
    width = gm.get_parameter(weight).shape[0]
    calls = []

    def evaluate(model):
        calls.append(1)
        return {"acc": 0.0 if model.get_parameter(weight).shape[0] < width else 1.0}

    pruned, stage, _ = _run(gm, inputs, {"evaluate": evaluate}, target_macs=0.7, step=0.1)
    stats = stage.stats
    assert stats["budget_met"] and stats["metric"] == "acc" and stats["metric_after"] == 1.0
    assert pruned.get_parameter(weight).shape[0] == width
    assert favourite not in {t["group"] for t in stats["trace"]}
    assert len(calls) == 1 + len(stats["candidates"])  # the input model, then each candidate


def test_calibration_batches_score_the_fidelity() -> None:
    _, gm, inputs = small_trace(models.SqueezeExcite)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 3, 8, 8, generator=gen),) for _ in range(3)]
    _, stage, _ = _run(gm, inputs, {"calibration": batches}, target_macs=0.6, round_to=4)
    stats = stage.stats
    assert stats["metric"] == "output cosine similarity" and stats["metric_before"] == 1.0
    assert -1.0 <= stats["metric_after"] < 1.0


# --------------------------------------------------------------------------- fine-tuning


def test_short_finetune_calls_recovery_distill_per_candidate(monkeypatch) -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    calls = []

    def distill(student, teacher, train, *, steps, progress):
        calls.append((type(student).__name__, teacher is not None, train, steps, progress))
        return student, None

    monkeypatch.setitem(sys.modules, "graphopt.recovery", types.SimpleNamespace(distill=distill))
    extras = {"train": "batches"}
    _, stage, _ = _run(gm, inputs, extras, target_macs=0.5, round_to=4, short_finetune_steps=3)
    assert "distill" in stage.stats["finetune"]
    assert len(calls) == len(stage.stats["candidates"]) > 0
    assert calls[0][1:] == (True, "batches", 3, False)


def test_short_finetune_with_the_real_distill() -> None:
    pytest.importorskip("graphopt.recovery")
    _, gm, inputs = small_trace(models.ConvChain)
    gen = torch.Generator().manual_seed(2)
    train = [(torch.randn(2, 3, 8, 8, generator=gen), None) for _ in range(3)]
    pruned, stage, _ = _run(
        gm, inputs, {"train": train}, target_macs=0.5, round_to=4, short_finetune_steps=2
    )
    assert stage.stats["budget_met"] and "distill" in stage.stats["finetune"]
    assert pruned(*inputs).shape == (2, 5)


def test_short_finetune_without_data_is_skipped_and_a_broken_recovery_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    _, stage, _ = _run(gm, inputs, target_macs=0.5, round_to=4, short_finetune_steps=3)
    assert stage.stats["finetune"].startswith("skipped") and "train" in stage.stats["finetune"]
    assert stage.stats["budget_met"]
    # graphopt.recovery is part of graphopt, not optional: an import bug raises, never "skipped"
    monkeypatch.setitem(sys.modules, "graphopt.recovery", None)  # import fails
    extras = {"train": "batches"}
    with pytest.raises(ImportError, match=r"graphopt\.recovery"):
        _run(gm, inputs, extras, target_macs=0.5, round_to=4, short_finetune_steps=3)
