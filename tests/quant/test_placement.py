"""Where QDQ pairs go, and the functional rewrite of in-place activations."""

from __future__ import annotations

import torch
from torch import nn

from graphopt.capture import trace
from graphopt.passes import PassContext
from graphopt.passes.fold_batchnorm import FoldBatchNorm
from graphopt.quant.functionalize import functionalize_inplace
from graphopt.quant.placement import find_layers, find_sites
from graphopt.zoo import get_model
from tests.helpers import aten, count_op


def _resnet():
    model, inputs = get_model("resnet18", input_shape=(1, 3, 32, 32))
    gm = trace(model, inputs)
    FoldBatchNorm().call(gm, PassContext(inputs))
    functionalize_inplace(gm)
    gm.recompile()
    return gm, inputs


def test_functionalize_removes_inplace_ops_and_keeps_outputs() -> None:
    model, inputs = get_model("resnet18", input_shape=(1, 3, 32, 32))
    gm = trace(model, inputs)
    want = gm(*inputs)
    rewritten, kept = functionalize_inplace(gm)
    gm.graph.lint()
    gm.recompile()
    assert rewritten == 17 and kept == 0
    assert count_op(gm, aten.relu_) == 0 and count_op(gm, aten.relu) == 17
    torch.testing.assert_close(gm(*inputs), want, rtol=0, atol=0)


def test_later_readers_of_a_mutated_tensor_read_the_new_value() -> None:
    class Net(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            before = y.sum()
            torch.relu_(y)
            return y + before

    x = torch.randn(2, 4)
    gm = trace(Net(), (x,))
    want = gm(x)
    assert functionalize_inplace(gm) == (1, 0)
    gm.recompile()
    torch.testing.assert_close(gm(x), want)


def test_relu_outputs_not_conv_outputs_are_the_sites() -> None:
    gm, _inputs = _resnet()
    layers, refused = find_layers(gm)
    assert len(layers) == 21 and not refused
    sites = find_sites(gm, {layer.node for layer in layers})
    nodes = {n.name: n for n in gm.graph.nodes}
    conv_outputs_read_by_relu = [
        n
        for n in gm.graph.nodes
        if n.target is aten.conv2d.default
        and len(n.users) == 1
        and next(iter(n.users)).target is aten.relu.default
    ]
    assert conv_outputs_read_by_relu
    assert all(n.name not in sites.own for n in conv_outputs_read_by_relu)
    assert all(next(iter(n.users)).name in sites.own for n in conv_outputs_read_by_relu)
    pool = next(n for n in gm.graph.nodes if n.target is aten.max_pool2d.default)
    assert sites.shared[pool.name] == pool.args[0].name  # max pool reuses its input's grid
    assert all(nodes[name].op != "output" for name in sites.all)


def test_with_every_layer_float_nothing_is_quantized() -> None:
    gm, _inputs = _resnet()
    sites = find_sites(gm, set())
    assert sites.own == () and sites.shared == {}


def test_skip_matches_paths_prefixes_and_types() -> None:
    gm, _inputs = _resnet()
    layers, refused = find_layers(gm, skip=["layer1", "Linear", "conv1"])
    paths = {layer.path for layer in layers}
    assert not any(p.startswith("layer1.") for p in paths)
    assert "fc" not in paths and "conv1" not in paths and "layer2.0.conv1" in paths
    assert len(layers) + len(refused) == 21
