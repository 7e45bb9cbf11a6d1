"""low_rank over randomly generated architectures: always a valid graph, honest accounting."""

from __future__ import annotations

import hypothesis.strategies as st
import torch
from hypothesis import HealthCheck, given, settings

from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes.base import PassContext
from graphopt.passes.low_rank import LowRank
from tests.helpers import aten, count_op
from tests.strategies import random_models


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    random_models(),
    st.sampled_from(["svd", "tucker", "cp", "spatial_svd", "pca"]),
    st.sampled_from([0.25, 0.5]),
)
def test_low_rank_on_random_models(case, method: str, ratio: float) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    context = PassContext(inputs, {"calibration": [inputs, inputs]})
    result = PassManager([LowRank(method=method, ratio=ratio)]).run(gm, inputs, context=context)
    stage, out = result.stages[-1], result.graph_module
    layers = count_op(gm, aten.linear) + count_op(gm, aten.conv2d)
    assert stage.stats["decomposed"] + len(stage.stats["refused"]) == layers
    assert stage.modified == (stage.stats["decomposed"] > 0)
    assert result.stages[0].macs - stage.macs == stage.stats["macs_saved"] >= 0
    assert result.stages[0].params - stage.params == stage.stats["params_saved"] >= 0
    with torch.no_grad():
        expected, got = model(*inputs), out(*inputs)
    assert got.shape == expected.shape and torch.isfinite(got).all()
