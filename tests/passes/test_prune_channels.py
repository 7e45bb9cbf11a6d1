"""The ``prune`` pass: options, exactness on dead channels, the zoo end to end, random models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.backends import get_backend
from graphopt.capture import trace
from graphopt.errors import PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes.base import PassContext, get_pass, registered_passes
from graphopt.passes.prune_channels import PruneChannels
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace
from tests.strategies import random_models


def _run(gm, inputs, **options):
    result = PassManager([PruneChannels(**options)]).run(gm, inputs)
    return result.graph_module, result.stages[-1], result.stages[0]


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"ratio": 1.0}, "ratio"),
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": "0.5"}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"target_macs": 0.0}, "target_macs"),
        ({"target_macs": 1.5}, "target_macs"),
        ({}, "ratio"),
        ({"ratio": 0.5, "target_macs": 0.5}, "target_macs"),
        ({"ratio": 0.5, "importance": "l3"}, "importance"),
        ({"ratio": 0.5, "aggregate": "median"}, "aggregate"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "min_channels": 0}, "min_channels"),
        ({"ratio": 0.5, "ignore": "fc"}, "ignore"),
        ({"target_macs": 0.5, "selection": "latency"}, "selection"),
    ],
)
def test_bad_options_are_refused_by_name(options, option) -> None:
    with pytest.raises(ValueError, match=option):
        PruneChannels(**options)


def test_registered_as_prune_with_keyword_options() -> None:
    assert registered_passes()["prune"] is PruneChannels
    p = get_pass("prune", ratio=0.25, ignore=["fc"])
    assert p.options()["ignore"] == ("fc",) and not p.exact
    with pytest.raises(RecipeError, match="ratio"):
        get_pass("prune", ratio=2)


def test_unmatched_ignore_and_unreachable_target_are_pass_errors() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    with pytest.raises(PassError, match="ignore='conv9'"):
        PruneChannels(ratio=0.5, ignore=("conv9",)).run(gm, PassContext(inputs))
    single = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()  # its only channels are the output's
    gm = trace(single, inputs)
    with pytest.raises(PassError, match=r"target_macs=0\.5 cannot be reached.*1 groups are frozen"):
        PruneChannels(target_macs=0.5).run(gm, PassContext(inputs))


# --------------------------------------------------------------------------- exactness


def test_ratio_zero_changes_nothing() -> None:
    model, gm, inputs = zoo_trace("resnet18")
    pruned, stage, first = _run(gm, inputs, ratio=0.0)
    assert not stage.modified and stage.stats["units_removed"] == 0
    assert stage.params == first.params and stage.relative_error == 0
    assert torch.equal(model(*inputs), pruned(*inputs))


def test_dead_channels_are_pruned_first_and_exactly() -> None:
    model, _, inputs = small_trace(models.ConvChain)
    dead = [0, 5, 10, 15]
    with torch.no_grad():  # dead: zero filter and bias; their consumers' columns zeroed too
        model.conv1.weight[dead] = 0
        model.conv1.bias[dead] = 0
        model.conv2.weight[:, dead] = 0
        model.conv2.weight[dead] = 0
        model.conv2.bias[dead] = 0
        model.fc.weight.view(5, 16, 16)[:, dead] = 0
    gm = trace(model, inputs)
    pruned, stage, _ = _run(gm, inputs, ratio=0.25, importance="l1")
    assert stage.stats["units_removed"] == 8 and stage.relative_error <= 1e-5
    assert dict(stage.stats["plan"]["groups"]["conv1"]) == {"units": 16, "remove": dead}
    assert pruned.get_parameter("fc.weight").shape == (5, 12 * 16)


def test_ignored_layers_keep_their_output_channels() -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    pruned, stage, _ = _run(gm, inputs, ratio=0.5, ignore=["conv1"])
    assert pruned.get_parameter("conv1.weight").shape == (16, 3, 3, 3)
    assert pruned.get_parameter("conv2.weight").shape == (8, 16, 3, 3)
    assert {"group": "conv1", "reason": "output channels of an ignored layer (ignore='conv1')"} in (
        stage.stats["frozen"]
    )


def test_stats_list_frozen_and_partially_frozen_groups() -> None:
    _, gm, inputs = small_trace(models.GroupedAndSplit)
    _, stage, _ = _run(gm, inputs, ratio=0.5)
    assert stage.stats["frozen"] == [{"group": "fc", "reason": "reaches the model output"}]
    partial = stage.stats["partially_frozen"]
    assert partial[0]["group"] == "conv1" and "one channel per chunk" in partial[0]["reason"]


def test_a_second_run_with_the_target_already_met_changes_nothing() -> None:
    _, gm, inputs = small_trace(models.SqueezeExcite)
    pruned, stage, _ = _run(gm, inputs, target_macs=0.6)
    assert stage.modified
    _, second, _ = _run(pruned, inputs, target_macs=1.0)
    assert not second.modified and second.relative_error == 0


# --------------------------------------------------------------------------- the zoo

ZOO_CASES = [
    ("resnet18", {"target_macs": 0.5, "round_to": 8}),
    ("mobilenet_v2", {"target_macs": 0.5, "round_to": 8}),
    ("mobilenet_v2", {"target_macs": 0.5, "round_to": 8, "selection": "cost_aware"}),
    ("resnet50", {"ratio": 0.3, "round_to": 16}),
    ("vgg11_bn", {"ratio": 0.5, "importance": "bn_scale"}),
    ("densenet_tiny", {"ratio": 0.5, "importance": "l1", "aggregate": "max"}),
    ("transformer", {"ratio": 0.5, "importance": "taylor", "aggregate": "sum"}),
]


@pytest.mark.parametrize(
    ("name", "options"),
    ZOO_CASES,
    ids=[c[0] + (f"-{c[1]['selection']}" if "selection" in c[1] else "") for c in ZOO_CASES],
)
def test_zoo_models_prune_run_and_export_to_onnx(name, options) -> None:
    _, gm, inputs = zoo_trace(name)
    pruned, stage, first = _run(gm, inputs, **options)
    pruned.graph.lint()
    assert stage.modified and stage.params < first.params and stage.macs < first.macs
    assert stage.stats["macs_after"] == stage.macs  # the policy's cost model is exact
    if "target_macs" in options:
        assert 0.47 <= stage.macs / first.macs <= options["target_macs"]
    if "round_to" in options:  # every layer whose outputs were pruned keeps a multiple
        original = dict(gm.named_parameters())
        for key, p in pruned.named_parameters():
            if p.dim() >= 2 and p.shape[0] != original[key].shape[0]:
                assert p.shape[0] % options["round_to"] == 0, key
    batch = torch.cat([inputs[0]] * 3)
    expected = pruned(batch)
    assert expected.shape[0] == 3  # the batch dimension stayed dynamic
    compiled = get_backend("onnxruntime").compile(pruned, inputs)
    got = compiled.run([batch.numpy()])[0]
    diff = np.abs(got - expected.detach().numpy()).max() / np.abs(expected.detach().numpy()).max()
    assert diff <= 1e-4


def test_transformer_heads_are_pruned() -> None:
    _, gm, inputs = zoo_trace("transformer")
    pruned, _, _ = _run(gm, inputs, ratio=0.5)
    for layer in range(2):
        for proj in ("q_proj", "k_proj", "v_proj"):
            assert pruned.get_parameter(f"layers.{layer}.attn.{proj}.weight").shape[0] == 64
        assert pruned.get_parameter(f"layers.{layer}.attn.out_proj.weight").shape[1] == 64


# --------------------------------------------------------------------------- random models


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models(), st.integers(0, 4))
def test_random_models_prune_to_valid_graphs(case, which) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    options = [
        {"ratio": 0.5},
        {"ratio": 0.3, "importance": "random", "round_to": 2},
        {"target_macs": 0.7, "importance": "l1"},
        {"ratio": 0.6, "importance": "bn_scale", "aggregate": "max"},
        {"target_macs": 0.6, "selection": "cost_aware", "round_to": 2},
    ][which]
    try:
        pruned, stage, first = _run(gm, inputs, **options)
    except PassError as exc:  # a target no pruning can reach is the one allowed refusal
        assert "target_macs" in str(exc) and "cannot be reached" in str(exc)
        return
    pruned.graph.lint()
    assert stage.params <= first.params and stage.stats["macs_after"] == stage.macs
    batch = torch.cat([inputs[0]] * 2)
    assert pruned(batch).shape == model(batch).shape
