"""Graph surgery and costs: full-rank factor chains reproduce the traced layer (stride,
padding, dilation kept right), predicted MACs/params equal ``analyze``, refusals of the plan."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.ir import iter_ops, propagate_shapes
from graphopt.lowrank import factorize as fz
from graphopt.lowrank.calibration import collect_output_stats
from graphopt.lowrank.layers import LINEAR_OR_CONV, factor_stages, read_layer, stage_cost
from graphopt.lowrank.plan import RankRule, full_rank, method_for, plan_layer
from graphopt.lowrank.rewrite import LOW_RANK_META, replace_layer
from tests.helpers import aten, count_op, max_rel_diff


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(5, 6, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2))
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu_(self.conv(x))
        return self.head(y.mean((2, 3)))


def traced():
    torch.manual_seed(0)
    model = ConvNet().eval()
    x = torch.randn(2, 5, 9, 11)
    return model, trace(model, x), x


def factorize_layer(gm, layer, method, rank, x):
    weight = layer.weight.detach()
    if method == "svd":
        return fz.svd(weight, rank)
    if method == "tucker":
        return fz.tucker2(weight, rank)
    if method == "cp":
        return fz.cp(weight, rank)
    if method == "spatial_svd":
        return fz.spatial_svd(weight, rank)
    stats = collect_output_stats(gm, {layer.node: 1}, [(x,)])[layer.node]
    return fz.pca(weight, layer.bias, stats.mean, stats.covariance, rank)


@pytest.mark.parametrize("method", ["svd", "tucker", "cp", "spatial_svd", "pca"])
def test_full_rank_chain_reproduces_the_model(method: str) -> None:
    model, gm, x = traced()
    conv = next(iter_ops(gm, [aten.conv2d]))
    layer = read_layer(gm, conv)
    assert (layer.stride, layer.padding, layer.dilation, layer.groups) == (
        (2, 1),
        (1, 2),
        (1, 2),
        1,
    )
    rank = fz.cp_exact_rank(layer.weight) if method == "cp" else full_rank(layer, method)
    plan = plan_layer(layer, method, RankRule(), explicit=rank)
    fact = factorize_layer(gm, layer, method, plan.rank, x)
    replace_layer(gm, layer, plan.stages, fact.weights, fact.bias, method=method)
    gm.graph.lint()
    gm.recompile()
    propagate_shapes(gm, (x,))
    assert count_op(gm, aten.conv2d) == len(plan.stages)
    assert all(LOW_RANK_META in n.meta for n in iter_ops(gm, [aten.conv2d]))
    assert "conv.weight" not in dict(gm.named_parameters())
    with torch.no_grad():
        assert max_rel_diff(model(x), gm(x)) <= 1e-4
        other = torch.randn(3, 5, 9, 11)
        assert max_rel_diff(model(other), gm(other)) <= 1e-4
    cost = analyze(gm)
    assert cost.macs == analyze(traced()[1]).macs - plan.macs_before + plan.macs_after
    assert cost.params == analyze(traced()[1]).params - plan.params_before + plan.params_after


def test_stage_costs_match_analysis_for_every_method() -> None:
    _, gm, x = traced()
    layer = read_layer(gm, next(iter_ops(gm, [aten.conv2d])))
    macs, params = stage_cost(layer, [layer.original_stage()])
    node_macs = {s.name: s.macs for s in analyze(gm).nodes}
    assert macs == node_macs[layer.node.name]
    assert params == 6 * 5 * 9 + 6
    for method, rank in [("tucker", (4, 3)), ("cp", 7), ("spatial_svd", 5), ("svd", 3)]:
        predicted = stage_cost(layer, factor_stages(layer, method, rank))
        _, fresh, _ = traced()
        fresh_layer = read_layer(fresh, next(iter_ops(fresh, [aten.conv2d])))
        stages = factor_stages(fresh_layer, method, rank)
        weights = [torch.zeros(s.weight_shape) for s in stages]
        replace_layer(fresh, fresh_layer, stages, weights, None, method=method)
        fresh.recompile()
        propagate_shapes(fresh, (x,))
        new = [s for s in analyze(fresh).nodes if s.op.startswith("conv2d")]
        assert sum(s.macs for s in new) == predicted[0], method


def test_linear_rows_count_every_token() -> None:
    model = nn.Sequential(nn.Linear(8, 6)).eval()
    gm = trace(model, torch.randn(2, 5, 8))
    layer = read_layer(gm, next(iter_ops(gm, LINEAR_OR_CONV)))
    assert (layer.kind, layer.rows) == ("linear", 5)
    assert stage_cost(layer, [layer.original_stage()]) == (5 * 48, 54)


def test_plan_refuses_depthwise_grouped_and_kx1_spatial() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, groups=4),
        nn.Conv2d(4, 8, 3, groups=2),
        nn.Conv2d(8, 8, (3, 1)),
        nn.Conv2d(8, 8, 1),
    ).eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        gm = trace(model, torch.randn(2, 4, 9, 9))
    layers = [read_layer(gm, n) for n in iter_ops(gm, LINEAR_OR_CONV)]
    with pytest.raises(ValueError, match="depthwise"):
        method_for(layers[0], "tucker")
    with pytest.raises(ValueError, match="grouped"):
        method_for(layers[1], "svd")
    with pytest.raises(ValueError, match="3×1"):
        method_for(layers[2], "spatial_svd")
    assert method_for(layers[2], "tucker") == "tucker"
    assert [method_for(layers[3], m) for m in ("tucker", "cp", "spatial_svd", "pca")] == [
        "svd",
        "svd",
        "svd",
        "pca",
    ]


def test_shared_weights_and_string_padding_are_not_layers() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.fc(x))

    gm = trace(Shared().eval(), torch.randn(2, 6))
    reasons = {read_layer(gm, n) for n in iter_ops(gm, LINEAR_OR_CONV)}
    assert all(isinstance(r, str) and "shared" in r for r in reasons)
    gm = trace(nn.Conv2d(3, 4, 3, padding="same").eval(), torch.randn(2, 3, 8, 8))
    (reason,) = [read_layer(gm, n) for n in iter_ops(gm, LINEAR_OR_CONV)]
    assert isinstance(reason, str) and "string padding" in reason
