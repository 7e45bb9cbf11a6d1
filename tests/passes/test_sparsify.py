"""The ``sparsify`` pass: unstructured sparsity whose masks outlive it, and its stored size."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from torch import nn

from graphopt.capture import trace
from graphopt.data import Batches
from graphopt.errors import PassError
from graphopt.options import OptionError
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Sparsify, get_pass
from graphopt.sparsity import scores, select
from graphopt.sparsity.layers import find_weights
from graphopt.sparsity.masks import MASK_META, MaskGuard
from graphopt.sparsity.storage import sparse_bytes
from tests.helpers import max_rel_diff
from tests.strategies import random_models

WEIGHTS = ("0.weight", "3.weight", "7.weight", "9.weight")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 4),
    ).eval()


INPUTS = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)),)


def _context(model: nn.Module, *, labels: bool = True, teacher: bool = True) -> PassContext:
    x = torch.randn(32, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 4, (32,), generator=torch.Generator().manual_seed(2))
    return PassContext(
        INPUTS,
        teacher=trace(model, INPUTS) if teacher else None,
        train=Batches(x, y if labels else None, batch_size=8),
        calibration=Batches(x, batch_size=8, labels=False),
    )


def _run(*passes: object, model: nn.Module | None = None, **ctx: bool) -> tuple:
    model = model or _model()
    result = PassManager(list(passes)).run(
        trace(model, INPUTS), INPUTS, context=_context(model, **ctx)
    )
    return result.graph_module, result.stages


def _zeros(gm: torch.fx.GraphModule, name: str) -> float:
    return float((gm.get_parameter(name) == 0).float().mean())


def test_zero_sparsity_changes_nothing() -> None:
    model = _model()
    gm, stages = _run(Sparsify(sparsity=0.0), model=model)
    assert not stages[-1].modified
    assert torch.equal(gm(*INPUTS), model(*INPUTS))


def test_each_layer_reaches_the_target_and_its_mask_is_stored() -> None:
    gm, stages = _run(Sparsify(sparsity=0.6))
    stats = stages[-1].stats
    for name in WEIGHTS:
        weight = gm.get_parameter(name)
        assert int((weight == 0).sum()) == round(0.6 * weight.numel())
        assert torch.equal(gm.meta[MASK_META][name], weight != 0)
    assert stats["layers_sparsified"] == 4 and stats["sparsity"] == pytest.approx(0.6, abs=1e-3)
    row = stats["layers"][1]
    assert row["bytes_stored"] == min(row["bytes_dense"], row["bytes_bitmask"], row["bytes_csr"])
    assert stats["bytes_stored"] < stats["bytes_dense"] and "multiply the zeros" in stats["latency"]


def test_global_ranking_prunes_the_smallest_magnitudes_overall() -> None:
    model = _model()
    gm, stages = _run(Sparsify(sparsity=0.7, scope="global"), model=model)
    original = dict(model.named_parameters())
    pruned = torch.cat([original[n].detach().abs()[gm.get_parameter(n) == 0] for n in WEIGHTS])
    kept = torch.cat([original[n].detach().abs()[gm.get_parameter(n) != 0] for n in WEIGHTS])
    assert pruned.max() <= kept.min()
    assert len({round(_zeros(gm, n), 2) for n in WEIGHTS}) > 1  # layers differ
    assert stages[-1].stats["sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_n_of_m_keeps_n_of_every_m_along_the_input_dim() -> None:
    gm, stages = _run(Sparsify(pattern="2:4"))
    for name in WEIGHTS[1:]:
        weight = gm.get_parameter(name).detach()
        groups = weight.movedim(1, -1).reshape(-1, 4)
        assert bool(((groups != 0).sum(-1) == 2).all())
    refused = stages[-1].stats["refused"]
    assert refused == [{"node": "0", "reason": "3 inputs per group is not a multiple of M=4"}]
    assert _zeros(gm, "0.weight") == 0.0


def test_taylor_scores_are_the_squared_first_order_estimate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 0])
    gm = trace(model, (x,))
    refs, _ = find_weights(gm)
    got = scores.taylor(gm, refs, [((x,), y), ((x * 2,), y)], teacher=None)["0.weight"]
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for xb in (x, x * 2):
        model.zero_grad()
        nn.functional.cross_entropy(model(xb), y).backward()
        expected += (model[0].weight.detach().double() * model[0].weight.grad.double()).square()
    assert torch.allclose(got.double(), expected, rtol=1e-5)
    assert all(p.grad is None and p.requires_grad for p in gm.parameters())


def test_taylor_without_labels_uses_the_teacher_or_refuses() -> None:
    _, stages = _run(Sparsify(sparsity=0.5, score="taylor"), labels=False)
    assert stages[-1].stats["sparsity"] == pytest.approx(0.5, abs=1e-3)
    model = _model()
    ctx = _context(model, labels=False, teacher=False)
    with pytest.raises(PassError, match=r"\[sparsify\] score 'taylor' on unlabelled.*teacher"):
        Sparsify(sparsity=0.5, score="taylor").run(trace(model, INPUTS), ctx)
    with pytest.raises(PassError, match=r"needs gradients on data"):
        Sparsify(sparsity=0.5, score="taylor").run(trace(model, INPUTS), PassContext(INPUTS))


def test_the_schedule_is_tf_polynomial_decay_and_each_step_recovers() -> None:
    assert select.polynomial(0.0, 0.8, 4) == pytest.approx(
        [0.8 - 0.8 * (1 - t / 4) ** 3 for t in range(1, 5)]
    )
    gm, stages = _run(Sparsify(sparsity=0.8, steps=3, recovery={"steps": 2, "lr": 1e-2}))
    schedule = stages[-1].stats["schedule"]
    assert [row["target"] for row in schedule] == pytest.approx(select.polynomial(0, 0.8, 3))
    assert all(row["steps"] == 2 and "criterion" in row for row in schedule)
    assert [row["sparsity"] for row in schedule] == sorted(row["sparsity"] for row in schedule)
    for name in WEIGHTS:
        assert torch.equal(gm.get_parameter(name) != 0, gm.meta[MASK_META][name])


def test_masks_hold_exactly_zero_through_a_later_recover() -> None:
    gm, stages = _run(Sparsify(sparsity=0.7), get_pass("recover", steps=6, lr=0.05))
    assert stages[-1].stats["masked"] == 4 and stages[-1].stats["constraints"] == ()
    for name in WEIGHTS:
        assert torch.equal(gm.get_parameter(name) != 0, gm.meta[MASK_META][name])
        assert _zeros(gm, name) == pytest.approx(
            round(0.7 * gm.get_parameter(name).numel()) / gm.get_parameter(name).numel()
        )


def test_masks_survive_int8_and_qat() -> None:
    gm, stages = _run(
        Sparsify(sparsity=0.7), get_pass("quantize"), get_pass("recover", steps=4, lr=0.05)
    )
    assert stages[-1].stats["masked"] == 4
    for name in WEIGHTS:
        int8, keep = gm.get_buffer(f"{name}_int8"), gm.meta[MASK_META][name]
        assert not int8[~keep].any()  # what sparsify removed stays zero through int8 and QAT
        # a kept weight below half a step rounds to 0 (more of them with 7-bit weights)
        assert (int8[keep] != 0).float().mean() > 0.9


def test_a_stale_mask_is_rederived_or_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[0, 0] = False
    masks = {
        "0.weight": torch.ones(5, 4, dtype=torch.bool),
        "1.weight": ~torch.eye(2, 3).bool(),
        "gone.weight": keep,
    }
    guard = MaskGuard(model, masks)
    reasons = {row["tensor"]: row["reason"] for row in guard.refused}
    assert "re-derived from its exact zeros" in reasons["0.weight"]
    assert "non-zero" in reasons["1.weight"] and "no such parameter" in reasons["gone.weight"]
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    guard.after_step()
    assert model[0].weight[0, 0] == 0 and len(guard) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sparsity": 1.0}, r"sparsify\.sparsity"),
        ({}, "give one of sparsity"),
        ({"sparsity": 0.5, "pattern": "2:4"}, "give one of sparsity"),
        ({"pattern": "4:2"}, r"sparsify\.pattern: must be 'N:M'"),
        ({"pattern": "2:4", "steps": 3}, "pattern fixes"),
        ({"sparsity": 0.5, "initial_sparsity": 0.6}, "initial_sparsity"),
        ({"sparsity": 0.5, "score": "l2"}, r"sparsify\.score"),
        ({"sparsity": 0.5, "recovery": {"stesp": 3}}, r"sparsify\.recovery has no option 'stesp'"),
    ],
)
def test_bad_options_are_named(options: dict, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        get_pass("sparsify", **options)


def test_a_skip_typo_is_an_error_and_skip_is_honoured() -> None:
    model = _model()
    with pytest.raises(PassError, match=r"skip entry 'fc' matches no conv/linear layer"):
        Sparsify(sparsity=0.5, skip=["fc"]).run(trace(model, INPUTS), _context(model))
    gm, stages = _run(Sparsify(sparsity=0.5, skip=["9"]))
    assert (
        _zeros(gm, "9.weight") == 0.0
        and {"node": "9", "reason": "in skip"} in stages[-1].stats["refused"]
    )


def test_recovery_needs_a_teacher_and_train() -> None:
    model = _model()
    with pytest.raises(PassError, match=r"needs ctx\.teacher for recovery between steps"):
        Sparsify(sparsity=0.5, recovery={"steps": 1}).run(trace(model, INPUTS), PassContext(INPUTS))


def test_the_users_model_is_untouched() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(Sparsify(sparsity=0.9, steps=2, recovery={"steps": 1}), model=model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_sparse_encodings_count_bytes() -> None:
    weight = torch.zeros(4, 300)
    weight[:, ::10] = 1.0  # 30 kept per row, 120 in all
    size = sparse_bytes(weight)
    assert size.dense == 4800 and size.bitmask == 150 + 120 * 4
    assert size.csr == 5 * 1 + 120 * (2 + 4)  # uint8 row pointers, uint16 column indices
    assert size.best == ("bitmask", 630)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_sparsify_on_random_models(case: tuple) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    result = PassManager([Sparsify(sparsity=0.6)]).run(gm, inputs)
    out, stats = result.graph_module, result.stages[-1].stats
    for row in stats["layers"]:
        weight = out.get_parameter(row["weight"])
        assert row["zeros"] == int((weight == 0).sum()) >= round(0.6 * weight.numel())
    assert len(stats["layers"]) + len(stats["refused"]) == len(find_weights(gm)[0]) + len(
        find_weights(gm)[1]
    )
    assert torch.isfinite(out(*inputs)).all()
    assert max_rel_diff(model(*inputs), gm(*inputs)) == 0.0  # the captured graph untouched
