"""``remove_blocks`` and ``graphopt.residual``: which branches are found, that removing one is
exactly the model with that branch's output zeroed, targets, scores and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.errors import PassError
from graphopt.options import OptionError
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, get_pass
from graphopt.residual import find_branches, without_branch
from graphopt.zoo import get_model
from tests.helpers import tiny_bert
from tests.strategies import ResidualSpec, build_model, model_specs


def _bert() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    ids = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0  # padding: the mask is shared by every layer and must survive removals
    return tiny_bert(layers=2), (ids, mask)


def _resnet18() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return get_model("resnet18", input_shape=(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (_resnet18, [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]),
        (
            lambda: get_model("transformer"),
            ["layers.0.attn", "layers.0.ffn", "layers.1.attn", "layers.1.ffn"],
        ),
        (
            _bert,
            [
                f"bert.encoder.layer.{i}{part}"
                for i in range(2)
                for part in (".attention", "")  # attention sublayer, then the feed-forward
            ],
        ),
    ],
    ids=["resnet18", "transformer", "bert"],
)
def test_every_residual_branch_is_found_and_named_by_its_block(build, expected) -> None:
    model, inputs = build()
    assert [b.name for b in find_branches(trace(model, inputs))] == expected


def test_mobilenet_v2_inverted_residuals_are_found() -> None:
    model, inputs = get_model("mobilenet_v2", input_shape=(2, 3, 32, 32))
    names = [b.name for b in find_branches(trace(model, inputs))]
    with_skip = [
        f"features.{i}.conv"
        for i, block in enumerate(model.features)
        if getattr(block, "use_res_connect", False)
    ]
    assert names == with_skip and len(names) == 10


def test_adds_that_are_not_residuals_are_not_branches() -> None:
    class NotResidual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
            self.pos = nn.Parameter(torch.randn(4, 8))

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            x = x + self.pos  # a positional embedding: nothing to save
            scores = self.q(x) @ self.k(x).transpose(1, 2)
            return scores + mask  # heavy, but it does not read the stream it is added to

    inputs = (torch.randn(2, 4, 8), torch.zeros(2, 4, 4))
    assert find_branches(trace(NotResidual().eval(), inputs)) == []


def test_removing_a_resnet_block_is_the_model_with_its_branch_zeroed() -> None:
    model, inputs = _resnet18()
    gm = trace(model, inputs)
    branch = next(b for b in find_branches(gm) if b.name == "layer2.0")
    zeroed = copy.deepcopy(model)
    nn.init.zeros_(zeroed.layer2[0].bn2.weight)
    nn.init.zeros_(zeroed.layer2[0].bn2.bias)
    removed = without_branch(gm, branch)
    names = [name for name, _ in removed.named_parameters()]
    assert not any(n.startswith("layer2.0.conv") for n in names)  # its weights are gone too
    with torch.no_grad():
        assert torch.allclose(removed(*inputs), zeroed(*inputs), atol=1e-5)
    assert analyze(removed).macs == analyze(trace(model, inputs)).macs - branch.macs


def test_removing_a_bert_attention_sublayer_keeps_the_shared_mask() -> None:
    model, inputs = _bert()
    gm = trace(model, inputs)
    branch = next(b for b in find_branches(gm) if b.name == "bert.encoder.layer.0.attention")
    zeroed = copy.deepcopy(model)
    dense = zeroed.bert.encoder.layer[0].attention.output.dense
    nn.init.zeros_(dense.weight)
    nn.init.zeros_(dense.bias)
    trial = without_branch(gm, branch, share_weights=True)
    with torch.no_grad():
        assert torch.allclose(trial(*inputs), zeroed(*inputs), atol=1e-5)
        assert torch.allclose(
            gm(*inputs), model(*inputs), atol=1e-5
        )  # the trial shares, never mutates


def test_a_removed_block_leaves_a_graph_that_trains() -> None:
    model, inputs = _resnet18()  # its blocks end in relu_(x + f(x)): relu_(x) after removal
    gm = trace(model, inputs)
    for branch in [b for b in find_branches(gm) if b.name in ("layer1.1", "layer2.1")]:
        gm = without_branch(gm, next(b for b in find_branches(gm) if b.name == branch.name))
    x = inputs[0].clone()
    gm(x).sum().backward()  # no "modified by an inplace operation"
    assert torch.equal(x, inputs[0])


def test_nothing_to_remove_changes_nothing() -> None:
    model, inputs = _resnet18()
    gm = trace(model, inputs)
    for options in ({"blocks": 0}, {"target_macs": 1.0}):
        result = PassManager([get_pass("remove_blocks", **options)]).run(gm, inputs)
        stage = result.stages[-1]
        assert not stage.modified and stage.relative_error == 0.0
        assert stage.stats["stopped"].startswith("target already met")


def test_target_macs_removes_the_least_important_first_and_reports_every_block() -> None:
    model, inputs = get_model("transformer")
    before = [p.clone() for p in model.parameters()]
    result = PassManager([get_pass("remove_blocks", target_macs=0.6)]).run(
        trace(model, inputs), inputs
    )
    stats = result.stages[-1].stats
    assert stats["macs_after"] <= 0.6 * stats["macs_before"] < stats["macs_before"]
    rows = {row["block"]: row for row in stats["blocks"]}
    assert set(rows) == {"layers.0.attn", "layers.0.ffn", "layers.1.attn", "layers.1.ffn"}
    removed = [row for row in rows.values() if row["removed"]]
    assert [r["block"] for r in sorted(removed, key=lambda r: r["removed"])] == stats["removed"]
    first = min(rows.values(), key=lambda r: r["score"])
    assert rows[stats["removed"][0]]["score"] == first["score"]  # least important went first
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_metric_criterion_and_latency_target_use_the_context() -> None:
    model, inputs = _resnet18()
    gm = trace(model, inputs)
    probe = torch.randn(4, 3, 32, 32)
    reference = model(probe).detach()

    def agreement(module: nn.Module) -> float:  # higher is better: closeness to the original
        with torch.no_grad():
            return -float((module(probe) - reference).pow(2).mean())

    def macs_latency(module: nn.Module, _inputs: tuple[torch.Tensor, ...]) -> float:
        return analyze(module).macs * 1e-9  # a deterministic stand-in for a timed backend

    ctx = PassContext(inputs, validate=agreement, latency=macs_latency)
    result = PassManager([get_pass("remove_blocks", target_latency=0.8, criterion="metric")]).run(
        gm, inputs, context=ctx
    )
    stats = result.stages[-1].stats
    assert stats["removed"] and stats["macs_after"] <= 0.8 * stats["macs_before"]
    assert stats["latency_before_s"] == pytest.approx(analyze(gm).macs * 1e-9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give exactly one of target_macs"),
        ({"blocks": 1, "target_macs": 0.5}, "give exactly one of target_macs"),
        ({"target_macs": 0.0}, "target_macs"),
        ({"blocks": -1}, "blocks"),
        ({"blocks": 1, "criterion": "loss"}, "criterion"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        get_pass("remove_blocks", **options)


def test_bad_context_and_skip_are_named() -> None:
    model, inputs = _resnet18()
    gm = trace(model, inputs)
    with pytest.raises(PassError, match=r"needs ctx\.latency for target_latency"):
        get_pass("remove_blocks", target_latency=0.5).run(gm, PassContext(inputs))
    with pytest.raises(PassError, match=r"needs ctx\.evaluate for criterion .metric."):
        get_pass("remove_blocks", blocks=1, criterion="metric").run(gm, PassContext(inputs))
    with pytest.raises(PassError, match="skip entry 'layer9' matches no residual branch"):
        get_pass("remove_blocks", blocks=1, skip=["layer9"]).run(gm, PassContext(inputs))
    result = get_pass("remove_blocks", blocks=8, skip=["layer1"]).run(gm, PassContext(inputs))
    assert result.stats["stopped"] == "no removable branch left"
    assert not any(name.startswith("layer1.") for name in result.stats["removed"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model_specs(dims=(2, 1, 0)))
def test_random_models_lose_exactly_their_residual_branches(spec) -> None:
    model, inputs = build_model(spec)
    gm = trace(model, inputs)
    branches = find_branches(gm)
    assert len(branches) == sum(isinstance(layer, ResidualSpec) for layer in spec.layers)
    macs = analyze(gm).macs
    result = get_pass("remove_blocks", blocks=len(branches)).run(gm, PassContext(inputs))
    gm = result.graph_module
    gm.recompile()
    assert find_branches(gm) == []
    assert analyze(gm).macs == macs - sum(b.macs for b in branches)
    with torch.no_grad():
        out = gm(*inputs)
    assert out.shape == model(*inputs).shape and bool(torch.isfinite(out).all())
