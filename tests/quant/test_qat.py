"""QAT round trip: the trainable fake-quantized graph computes what the QDQ graph computes,
gradients reach the weights, and deploying again gives an int8 graph ORT can run."""

from __future__ import annotations

import torch

from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Quantize
from graphopt.quant import is_quantized, to_deployable, to_trainable
from graphopt.quant.rewrite import QuantOps
from graphopt.zoo import get_model
from tests.helpers import count_op


def _qdq(name: str = "resnet18"):
    model, inputs = get_model(name, input_shape=(1, 3, 32, 32))
    calib = [
        (torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)),) for i in range(2)
    ]
    ctx = PassContext(inputs, {"calibration": calib})
    gm = trace(model, inputs)
    return gm, PassManager([Quantize()]).run(gm, inputs, context=ctx).graph_module, inputs


def test_trainable_form_matches_the_qdq_form_and_has_gradients() -> None:
    _float, qdq, _inputs = _qdq()
    trainable = to_trainable(qdq)
    assert is_quantized(trainable) and count_op(trainable, QuantOps.dq_channel) == 0
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(trainable(x), qdq(x), rtol=0, atol=1e-5)
    params = [p for p in trainable.parameters() if p.dim() == 4]
    assert len(params) == 20 and all(p.requires_grad for p in params)
    trainable(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_round_trip_restores_the_int8_weights_exactly() -> None:
    _float, qdq, _inputs = _qdq()
    back = to_deployable(to_trainable(qdq))
    assert count_op(back, QuantOps.dq_channel) == count_op(qdq, QuantOps.dq_channel)
    assert count_op(back, QuantOps.q) == count_op(qdq, QuantOps.q)
    before = sorted(
        int(b.long().abs().sum()) for _, b in qdq.named_buffers() if b.dtype == torch.int8
    )
    after = sorted(
        int(b.long().abs().sum()) for _, b in back.named_buffers() if b.dtype == torch.int8
    )
    assert before == after
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back(x), qdq(x), rtol=0, atol=1e-6)


def test_training_steps_move_the_weights_and_redeploy_runs_on_ort(tmp_path) -> None:
    from graphopt.backends import get_backend

    _float, qdq, inputs = _qdq()
    trainable = to_trainable(qdq)
    optimizer = torch.optim.SGD(trainable.parameters(), lr=0.01)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.arange(8) % 10
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(trainable(x), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    deployed = to_deployable(trainable)
    compiled = get_backend("onnxruntime", intra_op_threads=1).compile(deployed, inputs)
    assert compiled.info["ort_op_counts"].get("QLinearConv", 0) == 20
    (got,) = compiled.run([inputs[0].numpy()])
    want = deployed(*inputs).detach().numpy()
    assert abs(got - want).max() <= 0.05 * abs(want).max()


def test_float_graphs_are_not_quantized() -> None:
    float_gm, _quantized, _inputs = _qdq()
    assert not is_quantized(float_gm) and not is_quantized(torch.nn.Linear(2, 2))
