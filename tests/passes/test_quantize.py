"""The quantize pass: options, calibration errors, structure, fidelity on the zoo, mixed
precision, fp16, idempotence, and the reported model size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace
from graphopt.errors import PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes.base import PassContext, get_pass
from graphopt.quant.rewrite import QuantOps
from graphopt.zoo import get_model
from tests.helpers import aten, count_op

IMAGE = (1, 3, 32, 32)


def _calibration(inputs: tuple[torch.Tensor, ...], batches: int = 3, batch: int = 4) -> list:
    gen = torch.Generator().manual_seed(1)
    x = inputs[0]
    if x.is_floating_point():
        return [(torch.randn(batch, *x.shape[1:], generator=gen),) for _ in range(batches)]
    high = int(x.max()) + 1
    return [(torch.randint(0, high, (batch, *x.shape[1:]), generator=gen),) for _ in range(batches)]


def _quantize(name: str, shape=IMAGE, **options):
    model, inputs = get_model(name, input_shape=None if name == "transformer" else shape)
    gm = trace(model, inputs)
    ctx = PassContext(inputs, {"calibration": _calibration(inputs)})
    result = PassManager([get_pass("quantize", **options)]).run(gm, inputs, context=ctx)
    return gm, inputs, result


@pytest.mark.parametrize(
    ("name", "min_cosine"),
    [
        # 0.9994 with full-range weights, 0.9990 with reduced ones (weight_range auto on x86
        # CPUs without VNNI: one bit fewer)
        ("resnet18", 0.998),
        ("mobilenet_v2", 0.999),
        ("densenet_tiny", 0.999),
        ("vgg11_bn", 0.999),
        ("transformer", 0.995),
    ],
)
def test_int8_on_the_zoo(name: str, min_cosine: float) -> None:
    gm, _inputs, result = _quantize(name)
    stage, q = result.stages[-1], result.graph_module
    stats = stage.stats
    convs_and_linears = count_op(gm, aten.conv2d) + count_op(gm, aten.linear)
    assert stats["layers_int8"] == convs_and_linears and stats["layers_float"] == 0
    assert count_op(q, QuantOps.dq_channel) == convs_and_linears
    assert count_op(q, QuantOps.q) == count_op(q, QuantOps.dq) == stats["activation_pairs"] > 0
    assert stats["cosine"] >= min_cosine
    # random weights give near-flat logits, so a few arg-max flips are expected
    assert stats["top1_agreement"] is None or stats["top1_agreement"] >= 0.75
    assert stage.modified and count_op(q, aten.batch_norm) <= count_op(gm, aten.batch_norm)
    int8_bytes = analyze(q).size_by_dtype.get("int8", 0)
    assert int8_bytes == sum(t.numel() for name, t in q.named_buffers() if t.dtype == torch.int8)
    if name != "transformer":  # whose embeddings stay float
        assert analyze(q).size_bytes < 0.3 * analyze(gm).size_bytes + 60_000


def test_params_count_int8_weights_and_size_counts_one_byte_each() -> None:
    gm, _inputs, result = _quantize("resnet18")
    before, after = analyze(gm), analyze(result.graph_module)
    bn_params = sum(
        m.numel() for n, m in gm.named_parameters() if n.endswith(("bn1.weight", "bn1.bias"))
    )
    assert after.params <= before.params and after.params >= before.params - 3 * bn_params
    conv_weights = sum(p.numel() for n, p in gm.named_parameters() if n.endswith("weight"))
    assert after.size_by_dtype["int8"] <= conv_weights
    assert after.size_by_dtype["int8"] >= 0.99 * (before.params - 2 * 9600)


def test_uint8_relu_outputs_have_zero_point_zero() -> None:
    _gm, _inputs, result = _quantize("resnet18")
    q = result.graph_module
    after_relu = [
        n for n in q.graph.nodes if n.target is QuantOps.q and n.args[0].target is aten.relu.default
    ]
    assert after_relu and all(n.args[2] == 0 for n in after_relu)
    assert all(n.args[5] is torch.uint8 for n in q.graph.nodes if n.target is QuantOps.q)


def test_int8_activations_are_symmetric() -> None:
    _gm, _inputs, result = _quantize("resnet18", activations="int8")
    quants = [n for n in result.graph_module.graph.nodes if n.target is QuantOps.q]
    assert quants and all(n.args[2] == 0 and n.args[5] is torch.int8 for n in quants)


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_every_observer_gives_a_faithful_graph(observer: str) -> None:
    _gm, _inputs, result = _quantize("resnet18", observer=observer)
    assert result.stages[-1].stats["cosine"] >= 0.99


def test_skip_by_path_and_by_type_keeps_layers_float() -> None:
    gm, _inputs, result = _quantize("resnet18", skip=["fc", "layer4"])
    stats = result.stages[-1].stats
    reasons = {r["node"]: r["reason"] for r in stats["refused"]}
    assert any("layer4" in r for r in reasons.values()) and any("fc" in r for r in reasons.values())
    assert stats["layers_int8"] == count_op(gm, aten.conv2d) + 1 - len(reasons)
    assert result.graph_module.fc.weight.dtype == torch.float32
    _gm, _inputs, by_type = _quantize("vgg11_bn", skip=["Linear"])
    q = by_type.graph_module
    linears = [n for n in q.graph.nodes if n.target is aten.linear.default]
    assert linears and all(n.args[1].op == "get_attr" for n in linears)
    assert all(n.args[1].op != "get_attr" for n in q.graph.nodes if n.target is aten.conv2d.default)


def test_mixed_keeps_the_most_sensitive_layers_float_to_meet_the_budget() -> None:
    _gm, _inputs, int8 = _quantize("resnet18")
    full = int8.stages[-1].stats["cosine"]
    target = 1 - (1 - full) / 4  # a budget the all-int8 graph misses
    _gm, _inputs, result = _quantize("resnet18", scheme="mixed", min_cosine=target)
    stats = result.stages[-1].stats
    table = stats["sensitivity"]
    assert len(table) == 21 and [r["cosine"] for r in table] == sorted(r["cosine"] for r in table)
    assert stats["budget_met"] and stats["cosine"] >= target > full
    assert 0 < stats["layers_float"] < 21
    kept = {r["node"] for r in stats["refused"]}
    most_sensitive = {r["node"] for r in table[: len(kept)]}
    assert kept == most_sensitive


def test_sensitivity_table_on_request_for_int8() -> None:
    _gm, _inputs, result = _quantize("mobilenet_v2", sensitivity=True, sensitivity_samples=4)
    table = result.stages[-1].stats["sensitivity"]
    assert len(table) == 53 and {"layer", "type", "cosine", "error"} <= set(table[0])


def test_fp16_halves_the_weights() -> None:
    gm, _inputs, result = _quantize("resnet18", scheme="fp16")
    before, after = analyze(gm), analyze(result.graph_module)
    assert after.size_by_dtype.get("float16", 0) >= 0.99 * before.size_by_dtype["float32"] / 2
    assert result.stages[-1].relative_error < 5e-3


def test_second_run_changes_nothing() -> None:
    _gm, inputs, result = _quantize("resnet18")
    again = PassManager([get_pass("quantize")]).run(
        result.graph_module, inputs, context=PassContext(inputs, {"calibration": [inputs]})
    )
    assert not again.stages[-1].modified
    assert "already quantized" in again.stages[-1].stats["refused"][0]["reason"]


def test_missing_calibration_data_is_a_clear_error() -> None:
    model, inputs = get_model("resnet18", input_shape=IMAGE)
    gm = trace(model, inputs)
    with pytest.raises(PassError, match="calibration data"):
        PassManager([get_pass("quantize")]).run(gm, inputs)
    result = PassManager([get_pass("quantize", calibration={"source": "example_inputs"})]).run(
        gm, inputs
    )
    assert result.stages[-1].stats["calibration_samples"] == inputs[0].shape[0]


def test_calibration_samples_cut_the_data() -> None:
    _gm, _inputs, result = _quantize("resnet18", calibration={"samples": 6})
    assert result.stages[-1].stats["calibration_samples"] == 6


def test_bad_calibration_data_is_a_pass_error() -> None:
    model, inputs = get_model("resnet18", input_shape=IMAGE)
    gm = trace(model, inputs)
    ctx = PassContext(inputs, {"calibration": ["not a tensor"]})
    with pytest.raises(PassError, match="calibration"):
        PassManager([get_pass("quantize")]).run(gm, inputs, context=ctx)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"scheme": "int4"}, "scheme"),
        ({"activations": "fp8"}, "activations"),
        ({"observer": "kl"}, "observer"),
        ({"percentile": 20}, "percentile"),
        ({"min_cosine": 1.5}, "min_cosine"),
        ({"skip": "fc"}, "skip"),
        ({"calibration": {"samplez": 3}}, "samplez"),
        ({"calibration": {"samples": 0}}, "samples"),
        ({"calibration": {"source": "web"}}, "source"),
        ({"sensitivity_samples": 0}, "sensitivity_samples"),
    ],
)
def test_bad_options_name_the_option(options: dict, named: str) -> None:
    with pytest.raises(RecipeError, match=named):
        get_pass("quantize", **options)


def test_user_model_with_inplace_ops_and_shared_input() -> None:
    """In-place ReLU on a tensor that is read again later: functionalized, still faithful."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 16, 3, padding=1)
            self.b = nn.Conv2d(16, 16, 3, padding=1)
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            z = torch.relu_(self.b(y))
            y = y + z
            return self.head(y.mean((2, 3)))

    torch.manual_seed(0)
    model = Net().eval()
    inputs = (torch.randn(2, 3, 16, 16),)
    gm = trace(model, inputs)
    ctx = PassContext(inputs, {"calibration": _calibration(inputs)})
    result = PassManager([get_pass("quantize")]).run(gm, inputs, context=ctx)
    stats = result.stages[-1].stats
    assert stats["functionalized"] == 1 and stats["layers_int8"] == 3
    assert stats["cosine"] > 0.999
