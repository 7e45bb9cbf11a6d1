"""The random-architecture strategy: valid, seeded models that capture exactly."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from graphopt.capture import trace
from tests.strategies import (
    MAX_CHANNELS,
    MAX_LAYERS,
    ActSpec,
    BatchNormSpec,
    ConcatSpec,
    HeadSpec,
    ModelSpec,
    ResidualSpec,
    TransformSpec,
    build_model,
    model_specs,
    random_models,
)


@settings(max_examples=25, deadline=None)
@given(random_models())
def test_random_models_run_and_capture_exactly(
    case: tuple[nn.Module, tuple[torch.Tensor, ...]],
) -> None:
    model, example_inputs = case
    assert not model.training
    with torch.no_grad():
        expected = model(*example_inputs)
    assert torch.isfinite(expected).all()
    gm = trace(model, example_inputs)
    with torch.no_grad():
        actual = gm(*example_inputs)
    scale = max(1.0, expected.abs().max().item())
    assert (actual - expected).abs().max().item() <= 1e-5 * scale


@settings(max_examples=50, deadline=None)
@given(model_specs())
def test_specs_respect_size_limits(spec: ModelSpec) -> None:
    assert len(spec.layers) + 1 <= MAX_LAYERS
    assert spec.size <= 16
    model, (example,) = build_model(spec)
    assert example.shape == spec.input_shape
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            assert module.in_channels <= MAX_CHANNELS and module.out_channels <= MAX_CHANNELS
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.num_features <= MAX_CHANNELS
            assert not torch.allclose(module.running_var, torch.ones_like(module.running_var))


@settings(max_examples=10, deadline=None)
@given(model_specs())
def test_build_is_deterministic(spec: ModelSpec) -> None:
    (first, (x1,)), (second, (x2,)) = build_model(spec), build_model(spec)
    assert torch.equal(x1, x2)
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_strategy_covers_the_awkward_cases() -> None:
    """Over a fixed sample, every layer kind and the tricky variants actually occur."""
    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None, derandomize=True)
    @given(model_specs())
    def collect(spec: ModelSpec) -> None:
        seen.add(f"dims{spec.dims}")
        previous = None
        for layer in spec.layers:
            seen.add(type(layer).__name__)
            if isinstance(layer, TransformSpec) and layer.groups > 1:
                seen.add("grouped")
            if isinstance(layer, BatchNormSpec) and not isinstance(previous, TransformSpec):
                seen.add("bn_not_after_transform")
            if isinstance(layer, ActSpec) and layer.inplace:
                seen.add("inplace")
            previous = layer
        if spec.head.bn:
            seen.add("head_bn1d")

    collect()
    expected = {
        "dims0", "dims1", "dims2", "TransformSpec", "BatchNormSpec", "ActSpec", "PoolSpec",
        "ResidualSpec", "ConcatSpec", "grouped", "bn_not_after_transform", "inplace", "head_bn1d",
    }  # fmt: skip
    assert expected <= seen, f"never generated: {expected - seen}"


def test_hand_written_spec_builds_the_expected_layers() -> None:
    spec = ModelSpec(
        dims=2,
        batch=1,
        in_channels=3,
        size=8,
        layers=(
            TransformSpec(6, kernel_size=3, padding=1, bias=False),
            ResidualSpec(6, kernel_size=3, bn=True, act="relu"),
            BatchNormSpec(),
            ConcatSpec(branch_channels=(2, 2), kernel_sizes=(1, 3), bn=False, include_input=True),
        ),
        head=HeadSpec(hidden=5, bn=True, act="gelu", out_features=3),
        seed=7,
    )
    model, (x,) = build_model(spec)
    kinds = [type(m).__name__ for m in model]
    assert kinds == [
        "Conv2d", "Residual", "BatchNorm2d", "Concat", "AdaptiveAvgPool2d", "Flatten",
        "Linear", "BatchNorm1d", "GELU", "Linear",
    ]  # fmt: skip
    assert model[3].branches[0][0].in_channels == 6
    assert model[6].in_features == 10  # 6 passed through + 2 + 2 from the branches
    with torch.no_grad():
        assert model(x).shape == (1, 3)


def test_random_models_accepts_dims_filter() -> None:
    seen_dims: set[int] = set()

    @settings(max_examples=10, deadline=None, database=None)
    @given(st.data())
    def draw(data: st.DataObject) -> None:
        _model, (x,) = data.draw(random_models(dims=(1,)))
        seen_dims.add(x.dim())

    draw()
    assert seen_dims == {3}
