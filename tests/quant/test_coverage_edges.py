"""Edges the third-party coverage suite hit: a near-zero input range, an empty site, a
weight that several layers read.

A layer whose input range is nearly zero (a random-init EfficientNet's pooled features:
1.8e-15) gets an activation scale so small that ONNX Runtime's int32 bias
``round(b / (s_x · s_w))`` overflows and QGemm outputs zeros; the weight scales are raised to
keep the bias in range (``qparams.quantize_weight``), and ORT then matches the torch graph.
An HF decoder concatenates its first keys to an empty cache tensor: calibrating must not try
to take the range of an empty tensor (that site stays float). ALBERT applies one layer at
every depth: its weights are stored once in int8, as they were once in float.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from graphopt.backends import get_backend
from graphopt.backends.base import to_numpy_inputs
from graphopt.capture import trace
from graphopt.fidelity import relative_error
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Quantize
from graphopt.quant.qparams import INT32_BIAS_LIMIT, quantize_weight
from graphopt.quant.rewrite import QuantOps


def _quantize(model: nn.Module, x: Tensor):
    gen = torch.Generator().manual_seed(2)
    calib = [(torch.randn(4, *x.shape[1:], generator=gen),) for _ in range(2)]
    ctx = PassContext((x,), {"calibration": calib})
    return PassManager([Quantize(progress=False)]).run(trace(model, (x,)), (x,), context=ctx)


class _TinyFeatures(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([0.05, -0.04, 0.3, 0.0]))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)) * 1e-14)


def test_weight_scales_rise_only_where_the_int32_bias_would_overflow() -> None:
    weight = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    bias = torch.tensor([0.05, 0.0, 1e-9, -0.3])
    _, plain, _ = quantize_weight(weight)
    _, scales, _ = quantize_weight(weight, bias=bias, input_scale=1e-15)
    assert torch.equal(scales[[1, 2]], plain[[1, 2]])  # no or tiny bias: as before
    assert (scales[[0, 3]] > plain[[0, 3]]).all()
    assert (bias.abs() / (1e-15 * scales) <= INT32_BIAS_LIMIT * (1 + 1e-6)).all()
    _, same, _ = quantize_weight(weight, bias=bias, input_scale=0.01)
    assert torch.equal(same, plain)  # a normal input range changes nothing


def test_a_near_zero_input_range_runs_on_ort_as_in_torch() -> None:
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    gm = _quantize(_TinyFeatures().eval(), x).graph_module
    compiled = get_backend("onnxruntime", intra_op_threads=1).compile(gm, (x,))
    (got,) = compiled.run(to_numpy_inputs((x,)))
    with torch.no_grad():
        expected = gm(x)
    assert expected.abs().max() > 0.1  # the bias, which ORT used to drop
    assert relative_error([expected], [torch.from_numpy(got)]) <= 1e-2


class _EmptyCache(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.k = nn.Linear(8, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        cache = torch.zeros(x.shape[0], 0, 8)  # what DynamicCache starts from
        return self.out(torch.cat([cache, self.k(x)], dim=1))


def test_an_empty_tensor_is_not_observed_and_the_rest_quantizes() -> None:
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    result = _quantize(_EmptyCache().eval(), x)
    stage = result.stages[-1]
    assert stage.modified and stage.relative_error < 0.2  # int8 of a random 8-wide layer


class _SharedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.layer(torch.relu(self.layer(x)))))


def test_a_weight_read_by_two_layers_is_stored_once_in_int8() -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    result = _quantize(_SharedLayer().eval(), x)
    gm = result.graph_module
    int8 = [name for name, _ in gm.named_buffers() if name.endswith("_int8")]
    assert sorted(int8) == ["head.weight_int8", "layer.weight_int8"]
    assert result.stages[-1].params == result.stages[0].params  # 8·8+8 + 8·3+3, once each
    dequant = [n for n in gm.graph.nodes if n.target is QuantOps.dq_channel]
    assert len(dequant) == 2 and len(dequant[0].users) == 2
    compiled = get_backend("onnxruntime", intra_op_threads=1).compile(gm, (x,))
    (got,) = compiled.run(to_numpy_inputs((x,)))
    with torch.no_grad():
        assert relative_error([gm(x)], [torch.from_numpy(got)]) <= 0.1
