"""``graphopt.recovery.distill``: recovers a damaged model, never returns a worse one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.recovery import distill
from graphopt.tasks import digits
from tests.recovery.small_task import accuracy, damaged, train_batches, trained_small_net


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return trained_small_net()


def _student(teacher: nn.Module, scale: float = 1.0) -> torch.fx.GraphModule:
    return trace(damaged(teacher, scale), digits.example_inputs())


def _state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_recovers_a_damaged_graph_module_by_the_task_metric(teacher: nn.Module) -> None:
    student = _student(teacher)
    before = accuracy(student)
    assert before < accuracy(teacher) - 30  # really damaged
    model, history = distill(
        student,
        teacher,
        train_batches(),
        steps=30,
        eval_every=10,
        lr=3e-3,
        evaluate=digits.accuracy,
    )
    assert model is student  # trained in place (what pruning's callback relies on)
    assert history.baseline == pytest.approx(before)
    assert history.improved and history.best_step in (10, 20, 30)
    assert accuracy(model) == pytest.approx(history.best)
    assert accuracy(model) > before + 30
    assert [r["step"] for r in history.records] == [10, 20, 30]
    assert history.criterion == "evaluate (first value)" and history.mode == "max"


def test_a_diverging_run_returns_the_input_unchanged(teacher: nn.Module) -> None:
    student = _student(teacher)
    original = copy.deepcopy(student)
    before = accuracy(student)
    model, history = distill(
        student,
        teacher,
        train_batches(),
        steps=6,
        eval_every=2,
        lr=1e4,
        optimizer="sgd",
        evaluate=digits.accuracy,
    )
    assert not history.improved and history.best_step == 0
    assert accuracy(model) == before == history.best
    assert _state_equal(model, original)
    assert all(
        p.requires_grad == q.requires_grad
        for p, q in zip(model.parameters(), original.parameters(), strict=True)
    )


def test_a_non_finite_loss_stops_training_and_keeps_the_best(teacher: nn.Module) -> None:
    student = _student(teacher)
    original = copy.deepcopy(student)
    model, history = distill(
        student,
        teacher,
        train_batches(),
        steps=50,
        eval_every=50,
        lr=1e30,
        optimizer="sgd",
        evaluate=digits.accuracy,
    )
    assert history.stopped is not None and "lower lr" in history.stopped
    assert history.steps < 50
    assert _state_equal(model, original)


def test_without_evaluate_the_held_out_distillation_loss_decides(teacher: nn.Module) -> None:
    student = _student(teacher)
    before = accuracy(student)
    model, history = distill(student, teacher, train_batches(), steps=20, eval_every=10, lr=3e-3)
    assert history.criterion == "held-out distillation loss" and history.mode == "min"
    assert history.improved and history.best < history.baseline
    assert accuracy(model) > before


def test_unlabelled_batches_distill_from_soft_targets_only(teacher: nn.Module) -> None:
    student = _student(teacher)
    before = accuracy(student)
    unlabelled = [(x, None) for x, _ in train_batches()]
    model, history = distill(
        student, teacher, unlabelled, steps=20, lr=3e-3, alpha=0.9, evaluate=digits.accuracy
    )
    assert history.improved and accuracy(model) > before


def test_the_teacher_is_never_modified(teacher: nn.Module) -> None:
    teacher = copy.deepcopy(teacher).train()  # a teacher left in training mode
    state = copy.deepcopy(teacher.state_dict())
    distill(_student(teacher.eval()), teacher.train(), train_batches(), steps=3, features=["conv2"])
    assert teacher.training and all(m.training for m in teacher.modules())
    assert all(torch.equal(state[k], v) for k, v in teacher.state_dict().items())  # BN stats too
    assert all(p.grad is None for p in teacher.parameters())


def test_epochs_budget_and_determinism(teacher: nn.Module) -> None:
    runs = []
    for _ in range(2):
        student = _student(teacher)
        data = train_batches(batch_size=128)  # 4 batches; 1 held out → 3 per epoch
        _, history = distill(student, teacher, data, epochs=1.5, seed=3)
        runs.append((student, history))
    assert runs[0][1].planned_steps == 5  # ceil(1.5 · 3)
    assert _state_equal(runs[0][0], runs[1][0])


def test_plain_module_student_and_named_features(teacher: nn.Module) -> None:
    student = damaged(teacher)
    _, history = distill(
        student, teacher, train_batches(), steps=4, features=["conv1", "relu2"], feature_weight=0.1
    )
    assert history.features == ("conv1", "relu2") and history.refused == ()


def test_graph_module_features_and_refusals(teacher: nn.Module) -> None:
    from graphopt.pass_manager import PassManager
    from graphopt.passes import get_pass

    example = digits.example_inputs()
    pruned = PassManager([get_pass("prune", ratio=0.5)]).run(trace(teacher, example), example)
    _, history = distill(
        pruned.graph_module, teacher, train_batches(), steps=2, features=["conv1", "fc", "pool"]
    )
    refused = {r["feature"]: r["reason"] for r in history.refused}
    assert "shapes differ" in refused["conv1"]  # 16 → 8 channels
    assert history.features == ("fc",)  # pool's output channels were pruned too
    assert "pool" in refused


def test_a_module_called_twice_is_refused_with_the_reason() -> None:
    from graphopt.zoo.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, (1, 1, 1, 1), 10, in_channels=1, width=16, stem="cifar").eval()
    gm = trace(model, digits.example_inputs())
    data = [(digits.load_split().x_train[:8], digits.load_split().y_train[:8])]
    _, history = distill(gm, model, data, steps=1, features=["layer1.0.relu", "layer1.0"])
    refused = {r["feature"]: r["reason"] for r in history.refused}
    assert "more than once" in refused["layer1.0.relu"]
    assert history.features == ("layer1.0",)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"features": ["nope"]}, ValueError, "features entry 'nope'"),
        ({"lr": 0}, ValueError, "lr: must be a number > 0"),
        ({"steps": 2, "epochs": 1}, ValueError, "steps or epochs"),
        ({"metric": "f1"}, ValueError, "metric 'f1'"),
    ],
)
def test_bad_arguments(teacher: nn.Module, kwargs: dict, error: type, match: str) -> None:
    evaluate = digits.accuracy if "metric" in kwargs else None
    with pytest.raises(error, match=match):
        distill(
            _student(teacher),
            teacher,
            train_batches(),
            steps=kwargs.pop("steps", 1),
            evaluate=evaluate,
            **kwargs,
        )


def test_bad_data_and_models(teacher: nn.Module) -> None:
    student = _student(teacher)
    with pytest.raises(TypeError, match="re-iterable"):
        distill(student, teacher, iter(list(train_batches())), steps=1)
    with pytest.raises(TypeError, match=r"\(inputs, labels\) pairs"):
        distill(student, teacher, [digits.load_split().x_train[:4]], steps=1)
    with pytest.raises(ValueError, match="share parameters"):
        distill(teacher, teacher, train_batches(), steps=1)


def _batch_norm_training_args(gm: torch.fx.GraphModule) -> list[bool]:
    return [n.args[5] for n in gm.graph.nodes if n.target is torch.ops.aten.batch_norm.default]


def test_batchnorm_trains_on_batch_statistics_then_returns_to_inference_form(
    teacher: nn.Module,
) -> None:
    student = _student(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    model, history = distill(
        student, teacher, train_batches(), steps=10, lr=3e-3, evaluate=digits.accuracy
    )
    assert history.improved
    assert _batch_norm_training_args(model) == [False, False]  # the graph as captured
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # statistics re-estimated
    x = digits.load_split().x_test[:5]
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # inference form: no batch dependence
        assert torch.allclose(model(x[:2]), model(x)[:2], atol=1e-5)


def test_frozen_batchnorm_keeps_the_running_statistics(teacher: nn.Module) -> None:
    student = _student(teacher)
    before = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    model, history = distill(
        student, teacher, train_batches(), steps=10, lr=3e-3, bn="frozen", evaluate=digits.accuracy
    )
    assert history.improved
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_plain_module_batchnorm_flags_are_restored(teacher: nn.Module) -> None:
    student = damaged(teacher)  # eval mode
    model, _ = distill(student, teacher, train_batches(), steps=3)
    assert not any(m.training for m in model.modules())
