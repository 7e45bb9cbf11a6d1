"""The ``recover`` pass: KD fine-tuning after prune / low rank / quantize, never worse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.data import calibration_batches
from graphopt.errors import PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Recover, get_pass, registered_passes
from graphopt.tasks import digits
from tests.recovery.small_task import accuracy, damaged, train_batches, trained_small_net


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return trained_small_net()


@pytest.fixture(scope="module")
def example() -> tuple[torch.Tensor, ...]:
    return digits.example_inputs()


def _context(model: nn.Module, example: tuple, **extras: object) -> PassContext:
    base = {"teacher": model, "train": train_batches(), "evaluate": digits.accuracy}
    return PassContext(example_inputs=example, extras={**base, **extras})


def test_registered_approximate_with_its_options() -> None:
    assert registered_passes()["recover"] is Recover
    p = get_pass("recover", steps=3, features=["layer1"], lr=1e-4)
    assert p.exact is False
    assert p.options()["steps"] == 3 and p.options()["features"] == ("layer1",)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"steps": 0}, "steps"),
        ({"epochs": -1}, "epochs"),
        ({"steps": 3, "epochs": 1}, "steps or epochs"),
        ({"lr": -1e-3}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"temperature": 0}, "temperature"),
        ({"alpha": 1.5}, "alpha"),
        ({"features": "layer1"}, "features"),
        ({"feature_weight": -1}, "feature_weight"),
        ({"mode": "best"}, "mode"),
        ({"eval_every": 0}, "eval_every"),
        ({"bn": "eval"}, "bn"),
        ({"metric": ""}, "metric"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_options_name_the_option(options: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Recover(**options)
    with pytest.raises(RecipeError, match=name):
        get_pass("recover", **options)


@pytest.mark.parametrize("missing", ["teacher", "train"])
def test_missing_inputs_are_pass_errors_naming_the_key(
    teacher: nn.Module, example: tuple, missing: str
) -> None:
    ctx = _context(teacher, example)
    setattr(ctx, missing, None)
    with pytest.raises(PassError, match=rf"\[recover\] needs ctx\.{missing}"):
        Recover(steps=1).run(trace(teacher, example), ctx)


def test_bad_teacher_and_bad_batches_are_pass_errors(teacher: nn.Module, example: tuple) -> None:
    gm = trace(teacher, example)
    with pytest.raises(PassError, match=r"must be a torch\.nn\.Module"):
        Recover(steps=1).run(gm, _context(teacher, example, teacher="resnet18"))
    bad = [(example[0], "labels")]
    with pytest.raises(PassError, match=r"\[recover\] train batch labels"):
        Recover(steps=1).run(gm, _context(teacher, example, train=bad))


def test_recovers_after_prune_with_shapes_changed(teacher: nn.Module, example: tuple) -> None:
    pipeline = PassManager(
        [
            get_pass("prune", ratio=0.5),
            get_pass("recover", steps=30, eval_every=10, lr=3e-3, features=["conv2", "fc"]),
        ]
    )
    result = pipeline.run(trace(teacher, example), example, context=_context(teacher, example))
    gm = result.graph_module
    assert gm.get_parameter("conv1.weight").shape == (8, 1, 3, 3)  # pruned from 16
    prune_stage, recover_stage = result.stages[1], result.stages[2]
    assert prune_stage.macs == recover_stage.macs  # recovery trains, never rewrites
    stats = recover_stage.stats
    assert recover_stage.modified and stats["improved"]
    assert stats["best"] > stats["baseline"]
    assert accuracy(gm) == pytest.approx(stats["best"])
    assert stats["features"] == ("fc",)
    assert "shapes differ" in stats["refused"][0]["reason"]
    assert stats["refused"][0]["feature"] == "conv2"


def test_never_worse_than_its_input(teacher: nn.Module, example: tuple) -> None:
    gm = trace(damaged(teacher), example)
    before = accuracy(gm)
    result = Recover(steps=4, eval_every=2, lr=1e4, optimizer="sgd").run(
        gm, _context(teacher, example)
    )
    assert result.modified is False
    assert accuracy(result.graph_module) == before == result.stats["best"]


def test_metric_option_picks_the_key(teacher: nn.Module, example: tuple) -> None:
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"error": 100 - accuracy(model), "accuracy": accuracy(model)}

    gm = trace(damaged(teacher), example)
    result = Recover(steps=10, lr=3e-3, metric="error", mode="min").run(
        gm, _context(teacher, example, evaluate=evaluate)
    )
    assert result.stats["criterion"] == "error" and result.stats["mode"] == "min"
    assert result.stats["best"] < result.stats["baseline"]
    with pytest.raises(PassError, match="metric 'f1'"):
        Recover(steps=1, metric="f1").run(gm, _context(teacher, example, evaluate=evaluate))


def test_recovers_after_low_rank(teacher: nn.Module, example: tuple) -> None:
    pipeline = PassManager(
        [
            get_pass("low_rank", method="svd", ratio=0.1),
            get_pass("recover", steps=20, eval_every=10, lr=3e-3),
        ]
    )
    result = pipeline.run(trace(teacher, example), example, context=_context(teacher, example))
    stats = result.stages[-1].stats
    assert result.stages[1].stats["decomposed"] >= 1
    assert stats["best"] >= stats["baseline"]
    assert accuracy(result.graph_module) == pytest.approx(stats["best"])


def test_quantized_graph_is_trained_and_stays_quantized(teacher: nn.Module, example: tuple) -> None:
    qat = pytest.importorskip("graphopt.quant.qat")
    calibration = calibration_batches(digits.load_split().x_train[:128], 32)
    ctx = _context(teacher, example, calibration=calibration)
    pipeline = PassManager(
        [get_pass("quantize", progress=False), get_pass("recover", steps=10, lr=1e-3)]
    )
    result = pipeline.run(trace(damaged(teacher, 0.6), example), example, context=ctx)
    stats = result.stages[-1].stats
    assert stats["quantized"] is True
    assert qat.is_quantized(result.graph_module)
    assert accuracy(result.graph_module) >= stats["baseline"] - 1.0
