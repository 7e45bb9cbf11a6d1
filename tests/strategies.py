"""Hypothesis strategies for small random CNN / MLP architectures.

Why a spec first, then a model: hypothesis draws a ``ModelSpec`` (frozen dataclasses of layer
specs) while tracking channels and spatial size, so every drawn spec is valid by
construction; the model is built from it deterministically. A failing example then shrinks
layer by layer and the spec prints as a readable list of layers. Compression passes (BN
folding, pruning, quantisation, backends) reuse these models, so they deliberately include
the awkward cases: BatchNorm after an add, a concat or a ReLU rather than a conv;
depthwise and grouped convs; biasless convs; in-place activations; residual adds that need a
1x1 projection; concats with the block input; Linear + BatchNorm1d heads; Conv1d nets.

Usage::

    @given(random_models())
    def test_something(case):
        model, example_inputs = case
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import hypothesis.strategies as st
import torch
from torch import Tensor, nn

from graphopt.zoo.seeding import randomize_norm_stats, seeded

__all__ = [
    "ActSpec",
    "BatchNormSpec",
    "ConcatSpec",
    "HeadSpec",
    "LayerSpec",
    "ModelSpec",
    "PoolSpec",
    "RandomModel",
    "ResidualSpec",
    "TransformSpec",
    "build_model",
    "model_specs",
    "random_models",
]

ActKind = Literal["relu", "relu6", "gelu", "silu"]
MAX_CHANNELS = 32
MAX_LAYERS = 8  # body layers + head


@dataclass(frozen=True)
class TransformSpec:
    """A Conv{1,2}d (or a Linear in an MLP): ``groups`` > 1 only for convs."""

    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    bias: bool = True


@dataclass(frozen=True)
class BatchNormSpec:
    """A BatchNorm{1,2}d on whatever the previous layer produced."""


@dataclass(frozen=True)
class ActSpec:
    kind: ActKind
    inplace: bool = False


@dataclass(frozen=True)
class PoolSpec:
    kind: Literal["max", "avg"]
    kernel_size: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class ResidualSpec:
    """``body(x) + skip(x)``; body is transform [→ BN] [→ act], skip a 1x1 projection if needed."""

    out_channels: int
    kernel_size: int
    bn: bool
    act: ActKind | None


@dataclass(frozen=True)
class ConcatSpec:
    """``cat([x?] + [branch_i(x)], dim=1)``; each branch is a same-size transform [→ BN]."""

    branch_channels: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    bn: bool
    include_input: bool


LayerSpec = TransformSpec | BatchNormSpec | ActSpec | PoolSpec | ResidualSpec | ConcatSpec


@dataclass(frozen=True)
class HeadSpec:
    """[global average pool + flatten] → Linear(hidden) [→ BN1d] [→ act] → Linear(out)."""

    hidden: int | None
    bn: bool
    act: ActKind | None
    out_features: int


@dataclass(frozen=True)
class ModelSpec:
    """A whole random model: ``dims`` is 2 (images), 1 (sequences, Conv1d) or 0 (MLP)."""

    dims: Literal[0, 1, 2]
    batch: int
    in_channels: int
    size: int
    layers: tuple[LayerSpec, ...]
    head: HeadSpec
    seed: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch, self.in_channels) + (self.size,) * self.dims


# --------------------------------------------------------------------------- drawing specs

_ACTS: tuple[ActKind, ...] = ("relu", "relu6", "gelu", "silu")


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _draw_transform(draw: st.DrawFn, channels: int, size: int, dims: int) -> TransformSpec:
    bias = draw(st.booleans())
    if dims == 0:
        return TransformSpec(out_channels=draw(st.integers(1, MAX_CHANNELS)), bias=bias)
    kernel = draw(st.sampled_from((1, 3, 5)))
    stride = draw(st.sampled_from((1, 2)))
    padding = draw(st.integers(0, kernel // 2))
    if size + 2 * padding < kernel:
        padding = kernel // 2  # always valid: size >= 1
    grouping = draw(st.sampled_from(("dense", "dense", "depthwise", "grouped")))
    groups, out = 1, draw(st.integers(1, MAX_CHANNELS))
    if grouping == "depthwise":
        multipliers = (1, 2) if channels * 2 <= MAX_CHANNELS else (1,)
        groups, out = channels, channels * draw(st.sampled_from(multipliers))
    elif grouping == "grouped" and channels % 2 == 0:
        groups = draw(st.sampled_from((2, 4))) if channels % 4 == 0 else 2
        out = groups * draw(st.integers(1, MAX_CHANNELS // groups))
    return TransformSpec(out, kernel, stride, padding, groups, bias)


def _draw_pool(draw: st.DrawFn, size: int) -> PoolSpec | None:
    kernel = draw(st.sampled_from((2, 3)))
    padding = draw(st.integers(0, kernel // 2))
    if size + 2 * padding < kernel:
        return None
    return PoolSpec(
        draw(st.sampled_from(("max", "avg"))), kernel, draw(st.sampled_from((1, 2))), padding
    )


def _draw_concat(draw: st.DrawFn, channels: int, dims: int) -> ConcatSpec:
    n = draw(st.integers(1, 3))
    include_input = channels + n <= MAX_CHANNELS and draw(st.booleans())
    budget = (MAX_CHANNELS - channels * include_input) // n  # keeps the concat <= MAX_CHANNELS
    kernels = (1,) * n if dims == 0 else tuple(draw(st.sampled_from((1, 3))) for _ in range(n))
    return ConcatSpec(
        branch_channels=tuple(draw(st.integers(1, budget)) for _ in range(n)),
        kernel_sizes=kernels,
        bn=draw(st.booleans()),
        include_input=include_input,
    )


@st.composite
def model_specs(
    draw: st.DrawFn,
    *,
    dims: Sequence[int] = (2, 2, 2, 1, 0),
    max_layers: int = MAX_LAYERS - 1,
    max_batch: int = 3,
) -> ModelSpec:
    """Valid random ``ModelSpec`` s: at most ``max_layers`` body layers plus a head.

    ``dims`` lists the kinds to pick from (repeats weight the choice): 2 for images
    ``(N, C, H, W)`` with H = W ≤ 16, 1 for ``(N, C, L)`` sequences, 0 for ``(N, F)`` MLPs.
    """
    ndim = draw(st.sampled_from(tuple(dims)))
    in_channels = draw(st.integers(1, 4) if ndim else st.integers(1, 16))
    size = draw(st.integers(1, 16)) if ndim else 1
    channels, current = in_channels, size
    kinds = ["transform", "transform", "bn", "act", "residual", "concat"]
    if ndim:
        kinds.append("pool")
    layers: list[LayerSpec] = []
    for _ in range(draw(st.integers(0, max_layers))):
        kind = draw(st.sampled_from(kinds))
        layer: LayerSpec | None
        if kind == "transform":
            layer = _draw_transform(draw, channels, current, ndim)
        elif kind == "bn":
            layer = BatchNormSpec()
        elif kind == "act":
            # In place only on a tensor the model created: never on the caller's input.
            layer = ActSpec(draw(st.sampled_from(_ACTS)), bool(layers) and draw(st.booleans()))
        elif kind == "pool":
            layer = _draw_pool(draw, current)
        elif kind == "residual":
            kernel = 1 if ndim == 0 else draw(st.sampled_from((1, 3)))
            act = draw(st.none() | st.sampled_from(_ACTS))
            out = draw(st.integers(1, MAX_CHANNELS))
            layer = ResidualSpec(out, kernel, draw(st.booleans()), act)
        else:
            layer = _draw_concat(draw, channels, ndim)
        if layer is None:
            continue
        channels, current = _shape_after(layer, channels, current)
        layers.append(layer)
    hidden = draw(st.none() | st.integers(1, MAX_CHANNELS))
    head = HeadSpec(
        hidden=hidden,
        bn=hidden is not None and draw(st.booleans()),
        act=None if hidden is None else draw(st.none() | st.sampled_from(_ACTS)),
        out_features=draw(st.integers(1, 10)),
    )
    return ModelSpec(
        dims=ndim,
        batch=draw(st.integers(1, max_batch)),
        in_channels=in_channels,
        size=size,
        layers=tuple(layers),
        head=head,
        seed=draw(st.integers(0, 2**16 - 1)),
    )


def _shape_after(layer: LayerSpec, channels: int, size: int) -> tuple[int, int]:
    if isinstance(layer, TransformSpec):
        return layer.out_channels, _out_size(size, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, PoolSpec):
        return channels, _out_size(size, layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, ResidualSpec):
        return layer.out_channels, size
    if isinstance(layer, ConcatSpec):
        return sum(layer.branch_channels) + channels * layer.include_input, size
    return channels, size


# --------------------------------------------------------------------------- building models


class Residual(nn.Module):
    """``body(x) + skip(x)`` with ``skip`` the identity or a 1x1 projection."""

    def __init__(self, body: nn.Module, skip: nn.Module | None) -> None:
        super().__init__()
        self.body = body
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.skip is None else self.skip(x)
        return self.body(x) + identity


class Concat(nn.Module):
    """``torch.cat`` of the branch outputs (and the input, DenseNet-style), on channels."""

    def __init__(self, branches: Sequence[nn.Module], include_input: bool) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)
        self.include_input = include_input

    def forward(self, x: Tensor) -> Tensor:
        outputs = [branch(x) for branch in self.branches]
        return torch.cat([x, *outputs] if self.include_input else outputs, dim=1)


class RandomModel(nn.Sequential):
    """A ``nn.Sequential`` built from a ``ModelSpec``, which it keeps as ``.spec``."""

    def __init__(self, spec: ModelSpec, modules: Sequence[nn.Module]) -> None:
        super().__init__(*modules)
        self.spec = spec

    def extra_repr(self) -> str:
        return f"seed={self.spec.seed}, input_shape={self.spec.input_shape}"


def _transform(dims: int, cin: int, spec: TransformSpec) -> nn.Module:
    if dims == 0:
        return nn.Linear(cin, spec.out_channels, bias=spec.bias)
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    return conv(
        cin,
        spec.out_channels,
        spec.kernel_size,
        stride=spec.stride,
        padding=spec.padding,
        groups=spec.groups,
        bias=spec.bias,
    )


def _same(dims: int, cin: int, cout: int, kernel: int) -> nn.Module:
    return _transform(dims, cin, TransformSpec(cout, kernel, 1, kernel // 2))


def _norm(dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def _act(kind: ActKind, inplace: bool = False) -> nn.Module:
    if kind == "gelu":
        return nn.GELU()
    return {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}[kind](inplace=inplace)


def _pool(dims: int, spec: PoolSpec) -> nn.Module:
    if dims == 2:
        pool = nn.MaxPool2d if spec.kind == "max" else nn.AvgPool2d
    else:
        pool = nn.MaxPool1d if spec.kind == "max" else nn.AvgPool1d
    return pool(spec.kernel_size, spec.stride, spec.padding)


def _layer(dims: int, channels: int, spec: LayerSpec) -> nn.Module:
    if isinstance(spec, TransformSpec):
        return _transform(dims, channels, spec)
    if isinstance(spec, BatchNormSpec):
        return _norm(dims, channels)
    if isinstance(spec, ActSpec):
        return _act(spec.kind, spec.inplace)
    if isinstance(spec, PoolSpec):
        return _pool(dims, spec)
    if isinstance(spec, ResidualSpec):
        body: list[nn.Module] = [_same(dims, channels, spec.out_channels, spec.kernel_size)]
        body += [_norm(dims, spec.out_channels)] if spec.bn else []
        body += [_act(spec.act)] if spec.act else []
        skip = (
            None if channels == spec.out_channels else _same(dims, channels, spec.out_channels, 1)
        )
        return Residual(nn.Sequential(*body), skip)
    branches = [
        nn.Sequential(_same(dims, channels, c, k), *([_norm(dims, c)] if spec.bn else []))
        for c, k in zip(spec.branch_channels, spec.kernel_sizes, strict=True)
    ]
    return Concat(branches, spec.include_input)


def _head(dims: int, channels: int, spec: HeadSpec) -> list[nn.Module]:
    modules: list[nn.Module] = []
    if dims:
        pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool1d(1)
        modules += [pool, nn.Flatten()]
    if spec.hidden is not None:
        modules.append(nn.Linear(channels, spec.hidden))
        modules += [nn.BatchNorm1d(spec.hidden)] if spec.bn else []
        modules += [_act(spec.act)] if spec.act else []
        channels = spec.hidden
    modules.append(nn.Linear(channels, spec.out_features))
    return modules


def build_model(spec: ModelSpec) -> tuple[nn.Module, tuple[Tensor, ...]]:
    """The eval-mode model of ``spec`` (seeded weights, random BN stats) and its example input."""
    with seeded(spec.seed):
        modules: list[nn.Module] = []
        channels, size = spec.in_channels, spec.size
        for layer in spec.layers:
            modules.append(_layer(spec.dims, channels, layer))
            channels, size = _shape_after(layer, channels, size)
        modules += _head(spec.dims, channels, spec.head)
        model = RandomModel(spec, modules)
    generator = torch.Generator().manual_seed(spec.seed)
    randomize_norm_stats(model, generator)
    example = torch.randn(spec.input_shape, generator=generator)
    return model.eval(), (example,)


def random_models(
    *, dims: Sequence[int] = (2, 2, 2, 1, 0), max_layers: int = MAX_LAYERS - 1
) -> st.SearchStrategy[tuple[nn.Module, tuple[Tensor, ...]]]:
    """``(model in eval mode, example_inputs)`` pairs built from ``model_specs``."""
    return model_specs(dims=dims, max_layers=max_layers).map(build_model)
