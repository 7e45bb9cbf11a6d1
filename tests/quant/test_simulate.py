"""``fast_simulation`` (the quantize pass's scoring stand-in) and the compiled calibration:
the same values as the QDQ graph and the interpreter, on several architectures."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from graphopt.capture import trace
from graphopt.errors import NumericsError
from graphopt.passes import PassContext, get_pass
from graphopt.quant.calibrate import observe
from graphopt.quant.observers import make_observer
from graphopt.quant.simulate import fast_simulation
from graphopt.zoo import get_model
from tests.strategies import random_models

aten = torch.ops.aten


def _quantized(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    gm = trace(model, inputs)
    calibration = {"source": "example_inputs"}
    return get_pass("quantize", calibration=calibration).run(gm, PassContext(inputs)).graph_module


@pytest.mark.parametrize(
    ("name", "shape"),
    [("resnet18", (4, 3, 32, 32)), ("mobilenet_v2", (4, 3, 32, 32)), ("transformer", None)],
)
def test_fast_simulation_is_bit_identical_to_the_qdq_graph(name: str, shape) -> None:
    model, inputs = get_model(name, input_shape=shape) if shape else get_model(name)
    gm = _quantized(model, inputs)
    fast = fast_simulation(gm)
    targets = {n.target for n in fast.graph.nodes if n.op == "call_function"}
    assert torch.ops.quantized_decomposed.dequantize_per_tensor.default not in targets
    assert torch.ops.quantized_decomposed.quantize_per_tensor.default not in targets
    assert len(dict(fast.named_buffers())) == len(dict(gm.named_buffers()))  # no float copies
    with torch.no_grad():
        assert torch.equal(fast(*inputs), gm(*inputs))
    assert any(
        n.target is torch.ops.quantized_decomposed.quantize_per_tensor.default
        for n in gm.graph.nodes
    )  # the pass's result itself is untouched


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_fast_simulation_matches_on_random_models(case) -> None:
    model, inputs = case
    gm = _quantized(model, inputs)
    with torch.no_grad():
        assert torch.equal(fast_simulation(gm)(*inputs), gm(*inputs))


def test_compiled_calibration_sees_what_the_graph_computes() -> None:
    model, inputs = get_model("resnet18", input_shape=(2, 3, 32, 32))
    gm = trace(model, inputs)
    names = [n.name for n in gm.graph.nodes if n.op == "call_function"][:20]
    observers = {name: make_observer("minmax") for name in names}
    kept = observe(gm, observers, [inputs, inputs], keep=1)
    with torch.no_grad():
        assert len(kept) == 1 and torch.equal(kept[0], gm(*inputs))  # the float reference
    values = {}

    class Record(torch.fx.Interpreter):
        def run_node(self, n):  # the reference: the interpreter's value of every node
            result = super().run_node(n)
            values[n.name] = result.clone() if isinstance(result, torch.Tensor) else result
            return result

    with torch.no_grad():
        Record(gm).run(*inputs)
    for name in names:
        value = values[name]
        if isinstance(value, torch.Tensor) and value.numel():
            assert observers[name].range(256) == (value.min().item(), value.max().item())
    assert not any("_graphopt_watch" in n for n, _ in gm.named_modules())  # gm untouched


def test_a_site_that_overflows_is_named_with_its_batch() -> None:
    class Overflow(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.exp(x * 1000.0)

    gm = trace(Overflow(), (torch.randn(2, 4),))
    site = next(n.name for n in gm.graph.nodes if n.op == "call_function" and "exp" in n.name)
    batches = [(torch.full((2, 4), -1.0),), (torch.ones(2, 4),)]
    with pytest.raises(NumericsError, match=rf"calibration batch 1: the output of node {site}"):
        observe(gm, {site: make_observer("percentile")}, batches)
