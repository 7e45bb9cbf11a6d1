import pytest
import torch
from torch import nn

from graphopt.capture import trace
from graphopt.errors import PassError
from graphopt.pass_manager import PassManager
from graphopt.passes import FoldBatchNorm, PassContext
from tests.helpers import aten, count_op, max_rel_diff, randomize_batchnorm


def fold(model: nn.Module, x: torch.Tensor):
    gm = trace(model, x)
    return gm, PassManager([FoldBatchNorm()]).run(gm, x)


@pytest.mark.parametrize(
    ("conv", "bn", "shape"),
    [
        (lambda: nn.Conv1d(3, 6, 3, bias=False), lambda: nn.BatchNorm1d(6), (2, 3, 10)),
        (lambda: nn.Conv2d(3, 6, 3, padding=1), lambda: nn.BatchNorm2d(6), (2, 3, 8, 8)),
        (lambda: nn.Conv2d(6, 6, 3, groups=6, bias=False), lambda: nn.BatchNorm2d(6), (2, 6, 8, 8)),
        (lambda: nn.Conv2d(4, 6, 3, groups=2, stride=2), lambda: nn.BatchNorm2d(6), (2, 4, 9, 9)),
        (lambda: nn.Conv3d(2, 4, 3, bias=False), lambda: nn.BatchNorm3d(4), (2, 2, 5, 5, 5)),
        (lambda: nn.Linear(5, 7, bias=False), lambda: nn.BatchNorm1d(7), (3, 5)),
        (lambda: nn.Linear(5, 7), lambda: nn.BatchNorm1d(7, affine=False), (3, 5)),
    ],
)
def test_folds_exactly_and_removes_batchnorm(conv, bn, shape) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(nn.Sequential(conv(), bn(), nn.ReLU())).eval()
    x = torch.randn(shape)
    gm, result = fold(model, x)
    out = result.graph_module
    assert count_op(out, aten.batch_norm) == 0
    assert count_op(gm, aten.batch_norm) == 1, "the input graph must be left untouched"
    assert result.stages[-1].modified and result.stages[-1].stats["folded"] == 1
    assert result.stages[-1].relative_error <= 1e-5
    assert max_rel_diff(model(x), out(x)) <= 1e-5
    other_batch = torch.randn(5, *shape[1:])
    assert max_rel_diff(model(other_batch), out(other_batch)) <= 1e-5
    assert result.stages[-1].size_bytes < result.stages[0].size_bytes


def test_second_run_changes_nothing() -> None:
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    x = torch.randn(2, 3, 6, 6)
    _, first = fold(model, x)
    again = PassManager([FoldBatchNorm()]).run(first.graph_module, x)
    assert again.stages[-1].modified is False
    assert again.stages[-1].stats["folded"] == 0


def test_user_model_is_not_mutated() -> None:
    model = randomize_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold(model, torch.randn(2, 3, 6, 6))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class ConvFeedsTwo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class BatchNormAfterRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


class LinearOn3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


@pytest.mark.parametrize(
    ("model", "shape", "reason_part"),
    [
        (ConvFeedsTwo, (2, 3, 6, 6), "users"),
        (BatchNormAfterRelu, (2, 3, 6, 6), "not a conv"),
        (LinearOn3d, (2, 4, 6), "not 2-D"),
    ],
)
def test_refusals_are_recorded_and_numerics_kept(model, shape, reason_part) -> None:
    net = randomize_batchnorm(model()).eval()
    x = torch.randn(shape)
    _, result = fold(net, x)
    stage = result.stages[-1]
    assert stage.modified is False
    assert count_op(result.graph_module, aten.batch_norm) == 1
    assert len(stage.stats["refused"]) == 1
    assert reason_part in stage.stats["refused"][0]["reason"]
    assert stage.stats["refused"][0]["node"] == "bn"
    assert max_rel_diff(net(x), result.graph_module(x)) <= 1e-6


def test_training_mode_is_a_clear_error() -> None:
    """``trace`` captures a training-mode model in eval mode; a graph exported in training
    mode by other means (here torch.export directly) still reaches the pass's refusal."""
    from graphopt.capture import export_program

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 6, 6)
    gm = export_program(model, (x,)).module()
    with pytest.raises(PassError, match=r"fold_batchnorm.*training mode.*model\.eval\(\)"):
        FoldBatchNorm().run(gm, PassContext(example_inputs=(x,)))


def test_folded_graph_stays_trainable() -> None:
    model = randomize_batchnorm(
        nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    _, result = fold(model, x)
    gm = result.graph_module
    gm(x).square().mean().backward()
    grads = [p.grad for p in gm.parameters()]
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("name", "shape", "expect_folded"),
    [
        ("resnet18", (1, 3, 32, 32), 20),
        ("resnet50", (1, 3, 32, 32), 53),
        ("mobilenet_v2", (1, 3, 32, 32), 52),
        ("vgg11_bn", (1, 3, 32, 32), 8),
        ("densenet_tiny", (1, 3, 32, 32), None),
        ("transformer", (1, 16), 0),
    ],
)
def test_zoo_models_fold_exactly(name: str, shape: tuple, expect_folded: int | None) -> None:
    from graphopt.zoo import get_model

    model, (x,) = get_model(name, input_shape=shape)
    _, result = fold(model, x)
    stage = result.stages[-1]
    if expect_folded is not None:
        assert stage.stats["folded"] == expect_folded
    folded_all = stage.stats["folded"] + len(stage.stats["refused"])
    assert folded_all == count_op(trace(model, x), aten.batch_norm)
    assert count_op(result.graph_module, aten.batch_norm) == len(stage.stats["refused"])
    assert stage.relative_error <= 1e-5
    assert max_rel_diff(model(x), result.graph_module(x)) <= 1e-5


def test_densenet_preactivation_bn_is_refused_with_reason() -> None:
    from graphopt.zoo import get_model

    model, (x,) = get_model("densenet_tiny")
    _, result = fold(model, x)
    refused = result.stages[-1].stats["refused"]
    assert refused, "pre-activation BN follows a concat, not a conv: it must stay"
    assert all(r["reason"] for r in refused)
