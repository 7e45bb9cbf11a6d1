"""The quantize pass over randomly generated architectures: no crash, a valid graph that
ONNX Runtime runs, and outputs close to the float model's."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings

from graphopt.backends import get_backend
from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Quantize
from graphopt.quant.quantizer import agreement, run_batches
from tests.strategies import random_models


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_quantize_random_models(case) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.randn(inputs[0].shape, generator=gen),) for _ in range(3)]
    result = PassManager([Quantize()]).run(
        gm, inputs, context=PassContext(inputs, {"calibration": calib})
    )
    stats, q = result.stages[-1].stats, result.graph_module
    assert stats["layers_int8"] >= 1
    score = agreement(run_batches(gm, calib), run_batches(q, calib))
    assert score.cosine > 0.95, score
    compiled = get_backend("onnxruntime", intra_op_threads=1).compile(q, inputs)
    (got,) = compiled.run([inputs[0].numpy()])
    want = q(*inputs).detach().numpy()
    scale = max(float(np.abs(want).max()), 1e-6)
    assert np.abs(got - want).max() <= 0.1 * scale
