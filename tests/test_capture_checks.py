"""What capture refuses or corrects: training mode, non-tensor outputs, failing forwards.

Each of these used to pass silently (a training-mode graph, a 0-MAC report) or bury the one
useful line under torch's traceback.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch import Tensor, nn

import graphopt
from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.errors import CaptureError

aten = torch.ops.aten


class DropNorm(nn.Module):
    """Linear → BatchNorm → Dropout: both layers behave differently in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.bn(self.fc(x)))


class Returns(nn.Module):
    """A forward that returns ``make(y)`` for a real tensor ``y``."""

    def __init__(self, make: object) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.make = make

    def forward(self, x: Tensor) -> object:
        y = self.fc(x)
        return self.make(y) if callable(self.make) else self.make


class Inner(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x @ torch.ones(3, 3)  # x has 4 features: fails in eager mode


class BadShape(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)


class Quits(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        sys.exit(3)


class QuitsWhenExported(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if torch.compiler.is_exporting():
            raise SystemExit("no export for you")
        return x + 1


class Interrupts(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        raise KeyboardInterrupt


class Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent: export cannot capture this branch
            return x * 2
        return x


class InPlace(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mul_(2)


def _trained_dropnorm() -> DropNorm:
    torch.manual_seed(0)
    model = DropNorm()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    return model.train()


# ----------------------------------------------------------------------------- training mode


def test_a_training_mode_model_is_captured_in_eval_mode_with_a_warning() -> None:
    model = _trained_dropnorm()
    x = torch.randn(8, 6)
    with pytest.warns(UserWarning, match="training mode.*captured in eval mode"):
        gm = trace(model, (x,))
    assert model.training and all(m.training for m in model.modules())  # the user's flag
    with torch.no_grad():
        first, second = gm(x), gm(x)
        expected = model.eval()(x)  # running statistics, no dropout
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-6)
    calls = {n.target: n.args for n in gm.graph.nodes if n.op == "call_function"}
    assert calls[aten.dropout.default][2] is False  # dropout(x, p, train)
    assert calls[aten.batch_norm.default][5] is False  # batch_norm(x, w, b, mean, var, training)


def test_a_submodule_left_in_training_mode_is_caught_too() -> None:
    model = _trained_dropnorm().eval()
    model.drop.train()
    x = torch.randn(8, 6)
    with pytest.warns(UserWarning, match="training mode"):
        gm = trace(model, (x,))
    assert model.drop.training
    with torch.no_grad():
        torch.testing.assert_close(gm(x), gm(x), rtol=0, atol=0)


def test_an_eval_mode_model_gives_no_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trace(_trained_dropnorm().eval(), (torch.randn(8, 6),))


def test_compress_captures_a_training_mode_model_in_eval_mode() -> None:
    model = _trained_dropnorm()
    x = torch.randn(8, 6)
    with pytest.warns(UserWarning, match="captured in eval mode"):
        run = graphopt.compress(model, (x,), [])
    assert model.training
    with torch.no_grad():
        torch.testing.assert_close(run.original(x), run.original(x), rtol=0, atol=0)
        torch.testing.assert_close(run.compressed(x), model.eval()(x), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    ("make", "named"),
    [
        ("a string", "returned str;"),
        (None, "returned NoneType;"),
        (3, "returned int;"),
        ((), "returned an empty tuple;"),
        ({"a": None}, "returned a dict with no tensor leaves;"),
        (lambda y: (y, "label"), "returned a tuple with str leaves;"),
        (lambda y: {"logits": y, "n": 3, "w": 0.5}, "returned a dict with float, int leaves;"),
    ],
)
def test_a_forward_returning_non_tensors_is_refused(make: object, named: str) -> None:
    with pytest.raises(CaptureError) as info:
        trace(Returns(make).eval(), (torch.randn(2, 4),))
    message = str(info.value)
    assert named in message
    assert "graphopt needs a tensor or a tuple/list/dict of tensors" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "make",
    [lambda y: y, lambda y: (y, y + 1), lambda y: [y], lambda y: {"a": y, "b": (y, None)}],
)
def test_tensor_outputs_and_optional_none_leaves_are_accepted(make: object) -> None:
    gm = trace(Returns(make).eval(), (torch.randn(2, 4),))
    assert analyze(gm).macs > 0


def test_the_eager_check_leaves_the_example_inputs_alone() -> None:
    x = torch.ones(2, 3)
    trace(InPlace().eval(), (x,))
    assert torch.equal(x, torch.ones(2, 3))


# ----------------------------------------------------------------------------- failures


def test_an_eager_failure_is_named_as_such_on_one_first_line() -> None:
    with pytest.raises(CaptureError) as info:
        trace(BadShape().eval(), (torch.randn(2, 4),))
    first, _, rest = str(info.value).partition("\n")
    assert "fails on the example inputs in eager mode" in first
    assert "inner (Inner)" in first and "test_capture_checks.py" in first
    assert "x @ torch.ones(3, 3)" in first and "RuntimeError" in first
    assert "torch detail" in rest and "Traceback" in rest


def test_an_export_failure_puts_graphopts_explanation_first_and_torch_detail_after() -> None:
    with pytest.raises(CaptureError) as info:
        trace(Gate().eval(), (torch.randn(2, 4),))
    lines = str(info.value).splitlines()
    assert lines[0].startswith("could not capture the model, at module <root> (Gate)")
    assert "if x.sum() > 0" in lines[0] and "torch.where" in lines[0]
    assert len(lines) > 3 and lines[1] == "torch detail:"
    assert any("torch/" in line for line in lines[2:])  # the internals, for --debug only


def test_sys_exit_in_forward_becomes_a_capture_error() -> None:
    with pytest.raises(CaptureError) as info:
        trace(Quits().eval(), (torch.randn(2, 4),))
    first = str(info.value).splitlines()[0]
    assert "SystemExit" in first and "sys.exit(3)" in first
    assert isinstance(info.value.__cause__, SystemExit)


def test_sys_exit_during_export_becomes_a_capture_error() -> None:
    with pytest.raises(CaptureError) as info:
        trace(QuitsWhenExported().eval(), (torch.randn(2, 4),))
    first = str(info.value).splitlines()[0]
    assert first.startswith("could not capture the model") and "no export for you" in first


def test_keyboard_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        trace(Interrupts().eval(), (torch.randn(2, 4),))
