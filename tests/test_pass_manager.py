import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.capture import trace
from graphopt.errors import NumericsError, PassError, RecipeError
from graphopt.ir import iter_ops
from graphopt.pass_manager import PassManager, relative_error
from graphopt.passes import Pass, PassContext, PassResult, describe_passes, get_pass

aten = torch.ops.aten


class ScaleWeights(Pass):
    """Multiplies every linear weight: a deliberately wrong 'exact' pass."""

    name = "scale_weights"
    exact = True
    writes_in_place = True  # writes into a weight: gets a private copy

    def __init__(self, *, factor: float = 1.5) -> None:
        self.factor = factor

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        count = 0
        for node in iter_ops(gm, [aten.linear]):
            weight = gm.get_parameter(str(node.args[1].target))
            with torch.no_grad():
                weight.mul_(self.factor)
            count += 1
        return PassResult(gm, modified=count > 0, stats={"scaled": count})


class ApproxScale(ScaleWeights):
    name = "approx_scale"
    exact = False


class BreaksGraph(Pass):
    name = "breaks_graph"
    exact = True
    writes_in_place = True  # writes into a weight: gets a private copy

    def __init__(self) -> None:
        pass

    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        node = next(iter_ops(gm, [aten.linear]))
        weight = gm.get_parameter(str(node.args[1].target))
        weight.data = torch.zeros(weight.shape[0], weight.shape[1] + 1)  # no longer fits its input
        return PassResult(gm, modified=True)


class ReturnsWrongType(Pass):
    name = "wrong_type"
    exact = True

    def __init__(self) -> None:
        pass

    def call(self, gm, ctx):  # type: ignore[override]
        return gm


@pytest.fixture
def traced():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    return trace(model, x), x


def test_exact_pass_that_changes_outputs_fails_loudly(traced) -> None:
    gm, x = traced
    with pytest.raises(NumericsError, match=r"\[scale_weights\] declared exact"):
        PassManager([ScaleWeights()]).run(gm, x)


def test_approximate_pass_error_is_measured(traced) -> None:
    gm, x = traced
    result = PassManager([ApproxScale(factor=1.1)]).run(gm, x)
    stage = result.stages[-1]
    assert stage.name == "approx_scale" and stage.exact is False
    assert 0.05 < stage.relative_error < 1.0
    assert stage.stats == {"scaled": 2}


def test_input_graph_untouched(traced) -> None:
    gm, x = traced
    before = gm(x).clone()
    PassManager([ApproxScale()]).run(gm, x)
    assert torch.equal(gm(x), before)


def test_stage_reports_have_costs(traced) -> None:
    gm, x = traced
    result = PassManager([get_pass("fold_batchnorm")]).run(gm, x)
    names = [s.name for s in result.stages]
    assert names == ["capture", "fold_batchnorm"]
    assert result.stages[0].macs == 4 * 8 + 8 * 3
    assert result.stages[0].params == 4 * 8 + 8 + 8 * 3 + 3
    assert result.stages[1].modified is False


def test_shape_breaking_pass_is_named(traced) -> None:
    gm, x = traced
    with pytest.raises(PassError, match=r"\[breaks_graph\]"):
        PassManager([BreaksGraph()]).run(gm, x)


def test_result_type_is_checked(traced) -> None:
    gm, x = traced
    with pytest.raises(PassError, match=r"\[wrong_type\] returned GraphModule"):
        PassManager([ReturnsWrongType()]).run(gm, x)


def test_manager_rejects_non_passes() -> None:
    with pytest.raises(TypeError, match="Pass instances"):
        PassManager(["fold_batchnorm"])  # type: ignore[list-item]


def test_registry_errors_name_the_problem() -> None:
    with pytest.raises(RecipeError, match=r"unknown pass 'fold_bn'.*fold_batchnorm"):
        get_pass("fold_bn")
    with pytest.raises(RecipeError, match=r"has no option 'eps'"):
        get_pass("fold_batchnorm", eps=1e-3)


def test_describe_lists_builtin_passes() -> None:
    rows = {r["name"]: r for r in describe_passes()}
    assert rows["fold_batchnorm"]["exact"] is True
    assert "BatchNorm" in rows["fold_batchnorm"]["summary"]


def test_relative_error_definition() -> None:
    ref = [torch.tensor([1.0, -4.0])]
    assert relative_error(ref, [torch.tensor([1.0, -4.0])]) == 0.0
    assert relative_error(ref, [torch.tensor([1.4, -4.0])]) == pytest.approx(0.1)
    assert relative_error(ref, [torch.tensor([1.0])]) == float("inf")
