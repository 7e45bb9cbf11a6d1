"""BN folding over randomly generated architectures: never invalid, always exact."""

from hypothesis import HealthCheck, given, settings

from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import FoldBatchNorm
from tests.helpers import aten, count_op, max_rel_diff
from tests.strategies import random_models


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_fold_batchnorm_on_random_models(case) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    result = PassManager([FoldBatchNorm()]).run(gm, inputs)
    stage = result.stages[-1]
    before = count_op(gm, aten.batch_norm)
    assert stage.stats["folded"] + len(stage.stats["refused"]) == before
    assert count_op(result.graph_module, aten.batch_norm) == before - stage.stats["folded"]
    assert stage.modified == (stage.stats["folded"] > 0)
    assert max_rel_diff(model(*inputs), result.graph_module(*inputs)) <= 1e-5
