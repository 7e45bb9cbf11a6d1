"""The model zoo: every model builds, is seeded, has non-trivial BN stats and captures exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.capture import trace
from graphopt.errors import RecipeError
from graphopt.zoo import ZOO, get_model, list_models

aten = torch.ops.aten

# Small inputs keep the whole file fast; the default shapes are checked separately.
SMALL_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 3, 64, 64),
    "resnet50": (1, 3, 64, 64),
    "mobilenet_v2": (1, 3, 64, 64),
    "vgg11_bn": (1, 3, 64, 64),
    "densenet_tiny": (1, 3, 32, 32),
    "transformer": (1, 16),
}

EXPECTED_OPS: dict[str, set[object]] = {
    "resnet18": {aten.conv2d.default, aten.batch_norm.default, aten.relu_.default,
                 aten.max_pool2d.default, aten.add.Tensor, aten.adaptive_avg_pool2d.default,
                 aten.linear.default},
    "resnet50": {aten.conv2d.default, aten.batch_norm.default, aten.relu_.default,
                 aten.add.Tensor, aten.linear.default},
    "mobilenet_v2": {aten.conv2d.default, aten.batch_norm.default, aten.hardtanh_.default,
                     aten.add.Tensor, aten.linear.default},
    "vgg11_bn": {aten.conv2d.default, aten.batch_norm.default, aten.relu_.default,
                 aten.max_pool2d.default, aten.adaptive_avg_pool2d.default, aten.linear.default},
    "densenet_tiny": {aten.conv2d.default, aten.batch_norm.default, aten.cat.default,
                      aten.avg_pool2d.default, aten.linear.default},
    "transformer": {aten.embedding.default, aten.linear.default, aten.layer_norm.default,
                    aten.scaled_dot_product_attention.default, aten.gelu.default},
}  # fmt: skip

# torchvision's published parameter counts: the layouts must match torchvision's exactly.
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v2": 3_504_872,
    "vgg11_bn": 132_868_840,
}


@pytest.fixture(scope="module", params=list_models())
def zoo_case(request: pytest.FixtureRequest) -> Iterator[tuple[str, nn.Module, torch.Tensor]]:
    """One build per model for the whole module (VGG alone is 133 M parameters)."""
    name = request.param
    model, (example,) = get_model(name, seed=0, input_shape=SMALL_SHAPES[name])
    yield name, model, example


@pytest.fixture(scope="module")
def traced(zoo_case: tuple[str, nn.Module, torch.Tensor]) -> GraphModule:
    _, model, example = zoo_case
    return trace(model, (example,))


def _ops(gm: GraphModule) -> set[object]:
    return {node.target for node in gm.graph.nodes if node.op == "call_function"}


def _tolerance(reference: torch.Tensor) -> float:
    return 1e-5 * max(1.0, reference.abs().max().item())


def test_registry_covers_every_model() -> None:
    assert list_models() == sorted(SMALL_SHAPES)
    assert set(EXPECTED_OPS) == set(ZOO)


def test_model_runs_in_eval_mode_with_finite_sane_outputs(zoo_case) -> None:
    name, model, example = zoo_case
    assert not model.training
    assert all(not m.training for m in model.modules())
    with torch.no_grad():
        out = model(example)
    assert out.shape == (example.shape[0], 10 if name in ("transformer", "densenet_tiny") else 1000)
    assert torch.isfinite(out).all()
    assert 1e-3 < out.std().item() < 1e3, f"{name}: output std {out.std().item()} out of range"


def test_same_seed_same_model_and_inputs(zoo_case) -> None:
    name, model, example = zoo_case
    again, (example_again,) = get_model(name, seed=0, input_shape=SMALL_SHAPES[name])
    assert torch.equal(example, example_again)
    state, state_again = model.state_dict(), again.state_dict()
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k], state_again[k]) for k in state)


def test_different_seed_different_model(zoo_case) -> None:
    name, model, example = zoo_case
    other, (other_example,) = get_model(name, seed=1, input_shape=SMALL_SHAPES[name])
    assert not torch.equal(example, other_example)
    state, other_state = model.state_dict(), other.state_dict()
    differing = [k for k in state if state[k].is_floating_point()
                 and not torch.equal(state[k], other_state[k])]  # fmt: skip
    floating = [k for k in state if state[k].is_floating_point()]
    assert differing == floating


def test_get_model_leaves_global_rng_untouched(zoo_case) -> None:
    name = zoo_case[0]
    if name == "vgg11_bn":
        pytest.skip("the seeding path is shared; one more 133 M-parameter build is not worth it")
    state = torch.get_rng_state()
    get_model(name, seed=3, input_shape=SMALL_SHAPES[name])
    assert torch.equal(torch.get_rng_state(), state)


def test_batchnorm_and_layernorm_statistics_are_non_trivial(zoo_case) -> None:
    _, model, _ = zoo_case
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))]
    assert norms
    for module in norms:
        assert not torch.allclose(module.weight, torch.ones_like(module.weight))
        assert not torch.allclose(module.bias, torch.zeros_like(module.bias))
        assert module.weight.min() >= 0.6 and module.weight.max() <= 1.4
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_var.min() >= 0.5 and module.running_var.max() <= 2.0
            assert not torch.allclose(module.running_mean, torch.zeros_like(module.running_mean))


def test_trace_matches_eager(zoo_case, traced: GraphModule) -> None:
    _, model, example = zoo_case
    with torch.no_grad():
        expected, actual = model(example), traced(example)
    assert (actual - expected).abs().max().item() <= _tolerance(expected)


def test_trace_accepts_another_batch_size(zoo_case, traced: GraphModule) -> None:
    _, model, example = zoo_case
    batch = example.repeat(3, *([1] * (example.dim() - 1)))
    batch[1:] = batch[1:].flip(-1)  # distinct rows, so a broadcast bug cannot pass
    with torch.no_grad():
        expected, actual = model(batch), traced(batch)
    assert actual.shape[0] == 3
    assert (actual - expected).abs().max().item() <= _tolerance(expected)


def test_trace_contains_expected_aten_ops(zoo_case, traced: GraphModule) -> None:
    name = zoo_case[0]
    missing = EXPECTED_OPS[name] - _ops(traced)
    assert not missing, f"{name}: captured graph lacks {missing}"


def test_parameter_counts_match_torchvision(zoo_case) -> None:
    name, model, _ = zoo_case
    if name not in TORCHVISION_PARAMS:
        pytest.skip(f"{name} has no torchvision counterpart")
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


def test_torchvision_module_names() -> None:
    resnet, _ = get_model("resnet18", input_shape=(1, 3, 32, 32))
    names = dict(resnet.named_modules())
    for expected in ("conv1", "bn1", "maxpool", "layer1.0.conv1", "layer2.0.downsample.0",
                     "layer4.1.bn2", "avgpool", "fc"):  # fmt: skip
        assert expected in names
    mobilenet, _ = get_model("mobilenet_v2", num_classes=5, input_shape=(1, 3, 32, 32))
    names = dict(mobilenet.named_modules())
    assert isinstance(names["features.0.0"], nn.Conv2d)
    depthwise = names["features.2.conv.1.0"]
    assert isinstance(depthwise, nn.Conv2d) and depthwise.groups == depthwise.in_channels == 96
    assert isinstance(names["classifier.1"], nn.Linear) and names["classifier.1"].out_features == 5


def test_depthwise_convs_survive_capture(zoo_case, traced: GraphModule) -> None:
    if zoo_case[0] != "mobilenet_v2":
        pytest.skip("only MobileNetV2 has depthwise convs")
    groups = [n.args[6] for n in traced.graph.nodes
              if n.target == aten.conv2d.default and len(n.args) > 6]  # fmt: skip
    assert len(groups) == 17  # one depthwise conv per inverted residual block
    assert all(g > 1 for g in groups)


def test_default_input_shapes() -> None:
    assert ZOO["resnet50"].input_shape == (1, 3, 224, 224)
    assert ZOO["transformer"].input_shape == (1, 32)
    _, (tokens,) = get_model("transformer")
    assert tokens.shape == (1, 32) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < 1000


def test_transformer_options_pass_through() -> None:
    model, (tokens,) = get_model(
        "transformer", num_classes=3, num_layers=1, d_model=32, input_shape=(2, 8)
    )
    assert len(model.layers) == 1
    with torch.no_grad():
        assert model(tokens).shape == (2, 3)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(RecipeError, match="resnet18") as info:
        get_model("resnet19")
    assert "resnet19" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"depth": 3}, "no option"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (1, 1, 32, 32)}, "images of shape"),
        ({"input_shape": (1, 3, -2, 32)}, "positive ints"),
    ],
)
def test_bad_options_raise_recipe_error(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment):
        get_model("densenet_tiny", **kwargs)


def test_transformer_rejects_too_long_input() -> None:
    with pytest.raises(RecipeError, match="seq <= 128"):
        get_model("transformer", input_shape=(1, 129))
