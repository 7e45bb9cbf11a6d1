"""Post-training pruning: reconstruction importance, least-squares re-fit, BatchNorm
re-estimation (``graphopt.pruning.reconstruction``, ``graphopt.pruning.refit``)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from torch import Tensor, nn

from graphopt.capture import trace
from graphopt.data import TaskData
from graphopt.errors import PassError
from graphopt.ir import settle
from graphopt.passes import FoldBatchNorm, PassContext
from graphopt.passes.prune_channels import PruneChannels
from graphopt.pruning import apply_removals, find_groups
from graphopt.pruning.reconstruction import (
    greedy_scores,
    layer_statistics,
    reconstruction_scores,
    unit_errors,
)
from graphopt.pruning.refit import consumer_of, refit_pruned, solve_ridge
from graphopt.runner import compress
from graphopt.zoo import resnet
from graphopt.zoo.seeding import seeded_build
from tests.helpers import tiny_bert
from tests.passes.test_contract import fingerprint
from tests.pruning.conftest import zoo_trace
from tests.strategies import random_models


def _images(shape: tuple[int, ...], count: int = 64, seed: int = 1) -> list[tuple[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((count, *shape[1:]), generator=gen)
    return [(x[i : i + 16],) for i in range(0, count, 16)]


def _relative_error(a: Tensor, b: Tensor) -> float:
    return float((a - b).square().sum() / b.square().sum().clamp_min(1e-30))


def _outputs(gm: torch.fx.GraphModule, batches) -> Tensor:
    with torch.no_grad():
        return torch.cat([gm(*batch) for batch in batches])


def _prune_by_hand(gm, removals: dict, batches, *, refit: bool = True, **options):
    """Remove ``removals`` (group id → units) and re-fit / re-estimate as the pass does."""
    groups = find_groups(gm)
    teacher = copy.deepcopy(gm) if refit else None
    apply_removals(gm, groups, removals)
    report = refit_pruned(gm, teacher, groups, removals, batches, **options)
    gm.recompile()
    return report


# --------------------------------------------------------------------------- exactness


def test_the_ridge_solve_returns_the_weights_when_they_already_fit() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    theta = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    gram, cross = x.T @ x, x.T @ (x @ theta)
    for damping in (0.0, 0.01, 10.0):
        assert torch.allclose(solve_ridge(gram, cross, theta, damping), theta, atol=1e-10)


def test_refit_with_nothing_removed_changes_nothing() -> None:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    inputs = (torch.randn(4, 6),)
    gm = trace(model, inputs)
    before = fingerprint(gm)
    calibration = [(torch.randn(16, 6),)]
    ctx = PassContext(inputs, calibration=calibration)
    result = PruneChannels(ratio=0.0, refit=True, recalibrate_bn=True).run(gm, ctx)
    assert not result.modified and result.stats["refit"] == []
    assert fingerprint(result.graph_module) == before


class _Dependent(nn.Module):
    """A layer whose units 4..7 are twice units 0..3 (or zero), read by ``second``."""

    def __init__(self, kind: str, *, zero: bool = False) -> None:
        super().__init__()
        if kind == "linear":
            self.first, self.second = nn.Linear(5, 8), nn.Linear(8, 3)
        elif kind == "conv2d":  # stride and padding: the im2col of the re-fit must match
            self.first = nn.Conv2d(3, 8, 3, padding=1)
            self.second = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        else:
            self.first = nn.Conv1d(3, 8, 3, padding=1)
            self.second = nn.Conv1d(8, 4, 3, stride=2, padding=2, dilation=2)
        with torch.no_grad():
            scale = 0.0 if zero else 2.0
            self.first.weight[4:] = scale * self.first.weight[:4]
            self.first.bias[4:] = scale * self.first.bias[:4]

    def forward(self, x: Tensor) -> Tensor:
        return self.second(F.relu(self.first(x)))


_SHAPES = {"linear": (2, 5), "conv2d": (2, 3, 8, 8), "conv1d": (2, 3, 12)}


@pytest.mark.parametrize("kind", sorted(_SHAPES))
def test_refit_recovers_the_output_exactly_when_removed_channels_are_dependent(kind) -> None:
    torch.manual_seed(0)
    model = _Dependent(kind).eval()
    inputs = (torch.randn(_SHAPES[kind]),)
    batches = _images(_SHAPES[kind])
    original = trace(model, inputs)
    expected = _outputs(original, batches)
    sliced, fitted = copy.deepcopy(original), copy.deepcopy(original)
    _prune_by_hand(sliced, {"first": (4, 5, 6, 7)}, batches, refit=False)
    report = _prune_by_hand(fitted, {"first": (4, 5, 6, 7)}, batches, damping=0.0)
    assert _relative_error(_outputs(sliced, batches), expected) > 0.05
    assert _relative_error(_outputs(fitted, batches), expected) < 1e-9
    (row,) = report.rows
    assert row["layer"] == "second" and row["error_refit"] < 1e-9 < row["error_sliced"]


@pytest.mark.parametrize("kind", sorted(_SHAPES))
def test_refit_keeps_the_weights_when_the_removed_channels_are_zero(kind) -> None:
    torch.manual_seed(0)
    model = _Dependent(kind, zero=True).eval()
    inputs = (torch.randn(_SHAPES[kind]),)
    batches = _images(_SHAPES[kind])
    gm = trace(model, inputs)
    expected = _outputs(gm, batches)
    sliced = gm.second.weight.detach()[:, :4].clone()
    _prune_by_hand(gm, {"first": (4, 5, 6, 7)}, batches)  # the default damping
    assert torch.allclose(gm.second.weight, sliced, atol=1e-5)
    assert _relative_error(_outputs(gm, batches), expected) < 1e-10


class _ConstantChannel(nn.Module):
    """Unit 7 of ``first`` is the constant 1 after ReLU; ``second`` (1×1, no bias) reads it."""

    def __init__(self, bn: bool) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        with torch.no_grad():
            self.first.weight[7] = 0.0
            self.first.bias[7] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.second(F.relu(self.first(x))))


def test_a_batchnorm_absorbs_the_intercept_of_a_biasless_conv() -> None:
    torch.manual_seed(0)
    batches = _images((2, 3, 6, 6))
    for bn, intercept in ((True, "bn"), (False, "none")):
        gm = trace(_ConstantChannel(bn).eval(), batches[0])
        expected = _outputs(gm, batches)
        report = _prune_by_hand(gm, {"first": (7,)}, batches, damping=0.0)
        assert report.rows[0]["intercept"] == intercept
        error = _relative_error(_outputs(gm, batches), expected)
        assert (error < 1e-9) == bn, (bn, error)


# --------------------------------------------------------------------------- error bounds


def _bert() -> tuple[nn.Module, tuple[Tensor, ...], list]:
    model = tiny_bert(layers=1)
    gen = torch.Generator().manual_seed(1)
    batches = [
        (torch.randint(0, 50, (8, 12), generator=gen), torch.ones(8, 12, dtype=torch.long))
        for _ in range(4)
    ]
    return model, (batches[0][0][:2], batches[0][1][:2]), batches


def _resnet() -> tuple[nn.Module, tuple[Tensor, ...], list]:
    """The zoo's ResNet in the Fashion-MNIST task's layout (one block per stage), narrow."""
    model = seeded_build(lambda: resnet.ResNet(resnet.BasicBlock, (1, 1, 1, 1), 10, width=8,
                                               stem="cifar"), 0)  # fmt: skip
    batches = _images((1, 3, 16, 16))
    return model, (batches[0][0][:1],), batches


def _transformer() -> tuple[nn.Module, tuple[Tensor, ...], list]:
    model, _, inputs = zoo_trace("transformer")
    gen = torch.Generator().manual_seed(1)
    return model, inputs, [(torch.randint(0, 100, (16, 16), generator=gen),) for _ in range(4)]


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(12, 48), nn.GELU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5)
    ).eval()
    return model, (torch.randn(2, 12),), _images((2, 12), count=128)


ARCHITECTURES = {"resnet": _resnet, "transformer": _transformer, "bert": _bert, "mlp": _mlp}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_refit_lowers_the_output_error_on_several_architectures(name) -> None:
    model, inputs, batches = ARCHITECTURES[name]()
    base = trace(model, inputs)
    expected = _outputs(base, batches)
    errors = {}
    for refit in (False, True):
        gm = copy.deepcopy(base)
        p = PruneChannels(target_macs=0.7, refit=refit, recalibrate_bn=refit)
        result = p.run(gm, PassContext(inputs, calibration=batches))
        settle(gm, inputs, who="test")
        errors[refit] = _relative_error(_outputs(gm, batches), expected)
        rows = result.stats.get("refit", [])
        assert all(r["error_refit"] <= r["error_sliced"] for r in rows)
        assert bool(rows) == refit
    assert errors[True] <= errors[False], errors
    assert errors[True] < 0.5 * errors[False], errors  # not a coin flip: well below


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models(dims=(2, 1, 0), max_layers=4))
def test_refit_never_raises_a_layers_calibration_error(case) -> None:
    model, inputs = case
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn((8, *inputs[0].shape[1:]), generator=gen),) for _ in range(2)]
    gm = trace(model, inputs)
    options = {"ratio": 0.4, "importance": "reconstruction", "refit": True}
    result = PruneChannels(**options, recalibrate_bn=True).run(
        gm, PassContext(inputs, calibration=batches)
    )
    settle(gm, inputs, who="test")
    for row in result.stats["refit"]:
        assert row["error_refit"] <= row["error_sliced"] + 1e-9, row
    out = _outputs(gm, batches)
    assert out.shape[0] == 16 and bool(torch.isfinite(out).all())


# --------------------------------------------------------------------------- selection


def test_reconstruction_removes_the_channels_the_data_never_activates() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with torch.no_grad():  # units 0..3: the largest weights, but never above zero
        model[0].weight[:4] *= 10
        model[0].bias[:4] = -1000.0
    inputs = (torch.randn(2, 6),)
    batches = _images((2, 6))
    removed = {}
    for importance in ("l2", "reconstruction"):
        result = PruneChannels(ratio=0.25, importance=importance).run(
            trace(model, inputs), PassContext(inputs, calibration=batches)
        )
        removed[importance] = set(result.stats["plan"]["groups"]["0"]["remove"])
    assert removed["reconstruction"] == {0, 1, 2, 3}
    assert not removed["l2"] & {0, 1, 2, 3}


def test_the_greedy_scores_are_the_errors_of_removing_the_units() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 10), nn.ReLU(), nn.Linear(10, 4)).eval()
    inputs = (torch.randn(2, 5),)
    batches = _images((2, 5))
    gm = trace(model, inputs)
    (group,) = [g for g in find_groups(gm) if not g.frozen]
    (member,) = [m for m in group.members if m.role == "in"]
    node = next(n for n in gm.graph.nodes if n.name == member.node)
    consumer = consumer_of(node)
    stats = layer_statistics(gm, {node.name: consumer}, batches)[node.name]
    q = unit_errors(gm, node, consumer, member, stats, group.num_units)
    scores = greedy_scores(q, group.prunable_units)
    with torch.no_grad():
        x = torch.cat([b[0] for b in batches])
        hidden = torch.relu(x @ model[0].weight.T + model[0].bias)
        w = model[2].weight.detach()
        energy = (hidden @ w.T + model[2].bias).square().sum(1).mean()

    def error(units: list[int]) -> float:  # removal without re-fit, relative to the energy
        return float((hidden[:, units] @ w[:, units].T).square().sum(1).mean() / energy)

    order = scores.argsort().tolist()
    singles = [error([u]) for u in range(10)]
    assert order[0] == min(range(10), key=singles.__getitem__)
    assert scores[order[0]] == pytest.approx(singles[order[0]], rel=1e-4)
    pairs = {v: error([order[0], v]) for v in range(10) if v != order[0]}
    assert order[1] == min(pairs, key=pairs.__getitem__)
    assert float(scores[order[0]] + scores[order[1]]) >= pairs[order[1]] * (1 - 1e-4)


def test_a_layer_that_cannot_be_refitted_is_a_refusal_and_falls_back_to_l2() -> None:
    class MatmulHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(6, 12)
            self.w = nn.Parameter(torch.randn(12, 3))

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.fc1(x)) @ self.w

    inputs = (torch.randn(2, 6),)
    options = {"ratio": 0.5, "importance": "reconstruction", "refit": True}
    result = PruneChannels(**options).run(
        trace(MatmulHead().eval(), inputs), PassContext(inputs, calibration=_images((2, 6)))
    )
    assert result.stats["importance_fallbacks"] == ["fc1"]
    assert result.stats["refit"] == []
    (refusal,) = result.refusals
    assert "not re-fitted" in refusal.reason and "matmul" in refusal.reason


# --------------------------------------------------------------------------- BatchNorm


class _TwoNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv1, self.bn1 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _two_norms() -> nn.Module:
    from tests.pruning.models import seeded

    return seeded(_TwoNorms(), 0)


def test_batchnorm_statistics_are_re_estimated_after_the_changed_layers() -> None:
    model = _two_norms()
    batches = _images((2, 3, 8, 8))
    gm = trace(model, batches[0])
    stem_stats = (gm.bn0.running_mean.clone(), gm.bn0.running_var.clone())
    result = PruneChannels(ratio=0.5, ignore=("stem", "conv2"), recalibrate_bn=True).run(
        gm, PassContext(batches[0], calibration=batches)
    )
    assert result.stats["bn_recalibrated"] == 2  # bn1 (pruned) and bn2 after it, not bn0
    assert torch.equal(gm.bn0.running_mean, stem_stats[0])
    assert torch.equal(gm.bn0.running_var, stem_stats[1])
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():  # what train-mode BatchNorm over all the data computes
        h = F.relu(model.bn0(model.stem(x)))
        h = F.conv2d(h, gm.conv1.weight, gm.conv1.bias, padding=1)
        mean1, var1 = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)
        h = F.relu(F.batch_norm(h, mean1, var1, gm.bn1.weight, gm.bn1.bias, eps=1e-5))
        h = F.conv2d(h, gm.conv2.weight, gm.conv2.bias, padding=1)
    assert torch.allclose(gm.bn1.running_mean, mean1, atol=1e-5)
    assert torch.allclose(gm.bn1.running_var, var1, rtol=1e-4)
    assert torch.allclose(gm.bn2.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(gm.bn2.running_var, h.var((0, 2, 3)), rtol=1e-3)


def test_after_fold_batchnorm_there_is_nothing_to_re_estimate_and_biases_are_refitted() -> None:
    model = _two_norms()
    batches = _images((2, 3, 8, 8))
    gm = trace(model, batches[0])
    ctx = PassContext(batches[0], calibration=batches)
    FoldBatchNorm().run(gm, ctx)
    settle(gm, batches[0], who="test")
    result = PruneChannels(ratio=0.5, refit=True, recalibrate_bn=True).run(gm, ctx)
    assert result.stats["bn_recalibrated"] == 0
    assert {row["intercept"] for row in result.stats["refit"]} == {"bias"}


# --------------------------------------------------------------------------- the pass


@pytest.mark.parametrize(
    "options",
    [{"importance": "reconstruction"}, {"refit": True}, {"recalibrate_bn": True}],
)
def test_without_calibration_data_it_is_one_line_naming_ctx_calibration(options) -> None:
    inputs = (torch.randn(2, 6),)
    gm = trace(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), inputs)
    with pytest.raises(PassError, match=r"^\[prune\] needs ctx\.calibration for ") as info:
        PruneChannels(ratio=0.5, **options).run(gm, PassContext(inputs))
    assert "\n" not in str(info.value) and next(iter(options)) in str(info.value)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"importance": "reconstructions"}, "importance"),
        ({"refit": "yes"}, "refit"),
        ({"refit": 1}, "refit"),
        ({"recalibrate_bn": "true"}, "recalibrate_bn"),
        ({"damping": -0.1}, "damping"),
        ({"calibration_samples": 0}, "calibration_samples"),
    ],
)
def test_bad_options_are_refused_by_name(options, option) -> None:
    with pytest.raises(ValueError, match=rf"prune\.{option}"):
        PruneChannels(ratio=0.5, **options)


def test_the_users_model_is_untouched_and_only_calibration_samples_are_read() -> None:
    model = _two_norms()
    state = copy.deepcopy(model.state_dict())
    batches = _images((2, 3, 8, 8), count=64)
    p = PruneChannels(
        target_macs=0.6,
        importance="reconstruction",
        refit=True,
        recalibrate_bn=True,
        calibration_samples=40,
    )
    run = compress(model, batches[0], [p], data=TaskData(calibration=batches))
    stats = run.report.stages[-1].stats
    assert stats["calibration_samples"] == 40 and stats["refit"]
    assert not model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_every_step_of_iterative_pruning_is_refitted() -> None:
    model = _two_norms()
    batches = _images((2, 3, 8, 8))
    result = PruneChannels(ratio=0.5, steps=2, refit=True).run(
        trace(model, batches[0]), PassContext(batches[0], calibration=batches)
    )
    assert {row["step"] for row in result.stats["refit"]} == {1, 2}


def test_reconstruction_scores_cover_every_group() -> None:
    model, inputs, batches = _resnet()
    gm = trace(model, inputs)
    groups = find_groups(gm)
    scores, fallbacks = reconstruction_scores(gm, groups, batches)
    assert set(scores) == {g.id for g in groups} and not fallbacks
    for g in groups:
        assert scores[g.id].shape == (g.num_units,) and bool(torch.isfinite(scores[g.id]).all())
