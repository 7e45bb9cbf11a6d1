"""Non-finite numbers are errors, never results: per-stage checks of the pass manager, the
relative error, and the task metric (what it returns, and that it does not change the model)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.capture import trace
from graphopt.errors import GraphoptError, NumericsError, RecipeError
from graphopt.ir import iter_ops
from graphopt.metrics import evaluate_metric, function_name
from graphopt.pass_manager import PassManager, relative_error
from graphopt.passes import Pass, PassContext, PassResult

aten = torch.ops.aten


class FillNaN(Pass):
    """Fills the first linear weight with NaN while claiming to be exact."""

    name = "fill_nan"
    exact = True
    writes_in_place = True  # writes into a weight: gets a private copy

    def __init__(self) -> None:
        pass

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        node = next(iter_ops(gm, [aten.linear]))
        with torch.no_grad():
            gm.get_parameter(str(node.args[1].target)).fill_(math.nan)
        return PassResult(gm, modified=True)


class ApproxNaN(FillNaN):
    name = "approx_nan"
    exact = False


class PoisonUnusedBuffer(Pass):
    """Leaves an inf in a buffer no node reads: the outputs stay finite, the model does not."""

    name = "poison_buffer"
    exact = True

    def __init__(self) -> None:
        pass

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        gm.register_buffer("scratch", torch.tensor([1.0, math.inf]))
        return PassResult(gm, modified=True)


class Identity(Pass):
    name = "identity"
    exact = True

    def __init__(self) -> None:
        pass

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        return PassResult(gm, modified=False)


@pytest.fixture
def traced() -> tuple[GraphModule, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    return trace(model, x), x


# ---- the pass manager --------------------------------------------------------------------
def test_an_exact_pass_that_fills_weights_with_nan_is_named(traced) -> None:
    gm, x = traced
    with pytest.raises(NumericsError, match=r"^\[fill_nan\] produced non-finite outputs") as info:
        PassManager([FillNaN()]).run(gm, x)
    assert "6 NaN, 0 inf" in str(info.value)  # 2 samples × 3 outputs
    assert "first non-finite tensor is '0.weight'" in str(info.value)
    assert info.value.pass_name == "fill_nan"


def test_an_approximate_pass_producing_nan_is_an_error_too(traced) -> None:
    gm, x = traced
    with pytest.raises(NumericsError, match=r"^\[approx_nan\] produced non-finite outputs"):
        PassManager([ApproxNaN()]).run(gm, x)


def test_non_finite_checks_run_without_numeric_comparison(traced) -> None:
    gm, x = traced
    with pytest.raises(NumericsError, match=r"\[approx_nan\]"):
        PassManager([ApproxNaN()], check_numerics=False).run(gm, x)


def test_a_non_finite_tensor_with_finite_outputs_is_named(traced) -> None:
    gm, x = traced
    with pytest.raises(NumericsError, match=r"\[poison_buffer\] left non-finite values in tensor "):
        PassManager([PoisonUnusedBuffer()]).run(gm, x)


def test_a_mask_that_was_non_finite_at_capture_may_stay_so() -> None:
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.register_buffer("mask", torch.tensor([0.0, 0.0, -math.inf, -math.inf]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(x) + self.mask, dim=-1)

    x = torch.randn(2, 4)
    result = PassManager([Identity()]).run(trace(Masked().eval(), x), x)
    assert result.stages[-1].relative_error == 0.0


def test_non_finite_example_inputs_are_rejected_at_the_door(traced) -> None:
    gm, x = traced
    with pytest.raises(RecipeError, match=r"^the example input batch holds NaN \(input 0: 8 NaN"):
        PassManager([Identity()]).run(gm, torch.full_like(x, math.nan))
    with pytest.raises(RecipeError, match=r"holds inf"):
        PassManager([Identity()]).run(gm, x.clone().index_fill_(0, torch.tensor([1]), math.inf))


def test_a_model_with_non_finite_outputs_is_refused_before_any_pass() -> None:
    class Log(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(x)

    x = -torch.rand(2, 3) - 1  # log of negatives: NaN
    with pytest.raises(
        GraphoptError, match=r"non-finite outputs \(6 NaN, 0 inf\).*before any pass"
    ):
        PassManager([Identity()]).run(trace(Log(), x), x)


def test_run_refuses_a_module_that_is_not_a_graph_module() -> None:
    model = nn.Linear(4, 2)
    with pytest.raises(GraphoptError, match=r"^PassManager.run takes the GraphModule of graphopt"):
        PassManager([Identity()]).run(model, torch.randn(2, 4))  # type: ignore[arg-type]
    with pytest.raises(GraphoptError, match=r"got torch.nn.modules.linear.Linear"):
        PassManager([Identity()]).run(model, torch.randn(2, 4))  # type: ignore[arg-type]


# ---- the relative error ------------------------------------------------------------------
def test_relative_error_never_hides_nan() -> None:
    ref = [torch.tensor([1.0, -4.0])]
    assert math.isnan(relative_error(ref, [torch.tensor([math.nan, -4.0])]))
    assert math.isnan(relative_error([torch.tensor([math.nan, 1.0])], ref))
    # a NaN in a later output is not lost behind an earlier finite one
    two = [torch.tensor([1.0]), torch.tensor([2.0])]
    assert math.isnan(relative_error(two, [torch.tensor([1.0]), torch.tensor([math.nan])]))


def test_relative_error_of_infinities() -> None:
    ref = [torch.tensor([1.0, -4.0, -math.inf])]
    assert relative_error([torch.tensor([1.0, -4.0])], [torch.tensor([1.0, math.inf])]) == math.inf
    assert relative_error(ref, [torch.tensor([1.0, -4.0, math.inf])]) == math.inf
    same = relative_error(ref, [torch.tensor([1.4, -4.0, -math.inf])])
    assert same == pytest.approx(0.1)  # the same -inf in the same place: the finite part counts


# ---- the task metric ---------------------------------------------------------------------
def nan_accuracy(model: nn.Module) -> float:
    return math.nan


def test_a_nan_metric_names_the_stage_and_the_function(traced) -> None:
    gm, x = traced
    with pytest.raises(GraphoptError, match=r"nan_accuracy at stage 'capture' returned nan"):
        PassManager([Identity()]).run(gm, x, evaluate=nan_accuracy)


def test_a_nan_metric_after_a_pass_names_that_pass(traced) -> None:
    gm, x = traced
    calls = []

    def later_nan(model: nn.Module) -> dict[str, float]:
        calls.append(1)
        return {"accuracy": 0.9 if len(calls) == 1 else math.inf}

    with pytest.raises(GraphoptError, match=r"at stage 'identity' returned inf for 'accuracy'"):
        PassManager([Identity()]).run(gm, x, evaluate=later_nan)


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0.93", r"'0\.93' \(str\)"), (None, r"None \(NoneType\)"), ([0.9], r"\[0\.9\] \(list\)")],
)
def test_a_metric_that_is_not_a_number_is_a_clear_error(value, shown) -> None:
    def bad_metric(model: nn.Module) -> object:
        return value

    with pytest.raises(GraphoptError, match=rf"bad_metric returned {shown}; it must return"):
        evaluate_metric(bad_metric, nn.Linear(2, 2))  # type: ignore[arg-type]


def test_dict_metrics_are_checked_value_by_value() -> None:
    def metric(model: nn.Module) -> dict[str, object]:
        return {"top1": 0.9, "top5": "high"}

    with pytest.raises(GraphoptError, match=r"returned 'high' \(str\) for 'top5'"):
        evaluate_metric(metric, nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(GraphoptError, match="returned an empty dict"):
        evaluate_metric(lambda m: {}, nn.Linear(2, 2))


def test_numbers_of_every_kind_are_accepted() -> None:
    model = nn.Linear(2, 2)
    assert evaluate_metric(lambda m: 3, model) == {"metric": 3.0}
    assert evaluate_metric(lambda m: np.float32(0.5), model) == {"metric": 0.5}
    assert evaluate_metric(lambda m: torch.tensor([0.25]), model) == {"metric": 0.25}
    assert evaluate_metric(lambda m: {"a": torch.tensor(1.0)}, model) == {"a": 1.0}


def test_an_evaluate_that_changes_the_weights_is_named_and_the_model_kept(traced) -> None:
    gm, x = traced

    def trains_on_the_test_set(model: nn.Module) -> float:
        with torch.no_grad():
            for p in model.parameters():
                p.data.mul_(2)  # bypasses the version counter: only a comparison sees it
        return 0.5

    before = copy.deepcopy(gm.state_dict())
    with pytest.raises(GraphoptError, match=r"trains_on_the_test_set at stage 'capture' modified"):
        PassManager([Identity()]).run(gm, x, evaluate=trains_on_the_test_set)
    with pytest.raises(GraphoptError, match=r"modified the model it was given \(tensor '0.weight'"):
        evaluate_metric(trains_on_the_test_set, gm)
    after = gm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_evaluate_in_training_mode_is_caught_by_its_batchnorm_statistics() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))

    def forgot_eval(m: nn.Module) -> float:
        m.train()
        m(torch.randn(8, 3))
        return 1.0

    with pytest.raises(GraphoptError, match=r"forgot_eval modified .*running_mean"):
        evaluate_metric(forgot_eval, model.eval())
    assert not model.training and torch.equal(model[1].running_mean, torch.zeros(4))


def test_function_names_are_qualified() -> None:
    class Scorer:
        def __call__(self, model: nn.Module) -> float:
            return 1.0

    assert function_name(nan_accuracy) == "tests.test_numerics.nan_accuracy"
    assert function_name(Scorer()).endswith("test_function_names_are_qualified.<locals>.Scorer")
