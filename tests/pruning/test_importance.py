"""Importance: magnitude, BN scale, Taylor and random scores, normalised per layer."""

from __future__ import annotations

import pytest
import torch

from graphopt.pruning import compute_importance, find_groups
from graphopt.pruning.importance import member_scores
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


@pytest.mark.parametrize("method", ["l1", "l2", "bn_scale", "taylor", "random"])
@pytest.mark.parametrize("aggregate", ["sum", "mean", "max"])
def test_every_method_scores_every_unit(method, aggregate) -> None:
    _, gm, inputs = small_trace(models.SqueezeExcite)
    groups = find_groups(gm)
    scores, fallbacks = compute_importance(gm, groups, method, aggregate, example_inputs=inputs)
    for g in groups:
        s = scores[g.id]
        assert s.shape == (g.num_units,) and torch.isfinite(s).all() and (s >= 0).all()
    assert fallbacks == (["se1", "head"] if method == "bn_scale" else [])


def test_zeroed_channels_score_lowest() -> None:
    model, _, inputs = small_trace(models.ConvChain)
    with torch.no_grad():
        model.conv1.weight[[3, 7]] = 0
        model.conv2.weight[:, [3, 7]] = 0
    gm = models.trace_again(model, inputs)
    groups = find_groups(gm)
    for method in ("l1", "l2", "taylor"):
        scores, _ = compute_importance(gm, groups, method, example_inputs=inputs)
        assert set(scores["conv1"].argsort()[:2].tolist()) == {3, 7}


def test_bn_scale_ranks_by_gamma() -> None:
    model, _, inputs = zoo_trace("resnet18")
    with torch.no_grad():
        model.layer1[0].bn1.weight.fill_(1.0)
        model.layer1[0].bn1.weight[[5, 9]] = 0.01
    gm = models.trace_again(model, inputs)
    groups = [g for g in find_groups(gm) if g.id == "layer1.0.conv1"]
    scores, _ = compute_importance(gm, groups, "bn_scale")
    assert set(scores["layer1.0.conv1"].argsort()[:2].tolist()) == {5, 9}


def test_per_layer_normalisation_weighs_layers_equally() -> None:
    model, _, inputs = small_trace(models.ConvChain)
    with torch.no_grad():
        model.conv2.weight.mul_(1000.0)  # the consumer's scale must not drown the producer's
    gm = models.trace_again(model, inputs)
    group = next(g for g in find_groups(gm) if g.id == "conv1")
    nodes = {n.name: n for n in gm.graph.nodes}
    rows = [member_scores(gm, nodes[m.node], m, group.num_units, "l2") for m in group.members]
    scores, _ = compute_importance(gm, [group], "l2", "mean")
    expected = sum(r / r.mean() for r in rows) / len(rows)
    assert torch.allclose(scores["conv1"], expected)


def test_random_is_seeded_by_group() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    groups = find_groups(gm)
    a, _ = compute_importance(gm, groups, "random")
    b, _ = compute_importance(gm, groups, "random")
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["conv1"], a["conv2"])


def test_unknown_method_and_aggregate_are_refused() -> None:
    _, gm, _ = small_trace(models.ConvChain)
    with pytest.raises(ValueError, match="importance"):
        compute_importance(gm, find_groups(gm), "l3")
    with pytest.raises(ValueError, match="aggregate"):
        compute_importance(gm, find_groups(gm), "l1", "median")
