"""Shared traces: capturing a zoo model costs about a second, so each is traced once."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from graphopt.capture import trace
from graphopt.zoo import get_model
from tests.pruning import models

ZOO_SHAPES = {
    "resnet18": ((1, 3, 32, 32), {}),
    "resnet50": ((1, 3, 32, 32), {}),
    "mobilenet_v2": ((1, 3, 32, 32), {}),
    "vgg11_bn": ((1, 3, 32, 32), {"hidden_features": 64, "num_classes": 10}),
    "densenet_tiny": ((1, 3, 32, 32), {}),
    "transformer": ((1, 16), {}),
}

_CACHE: dict[str, tuple] = {}


def zoo_trace(name: str) -> tuple[torch.nn.Module, torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    """(model, trace, example inputs), fresh copies of cached ones (tests may edit them)."""
    if name not in _CACHE:
        shape, options = ZOO_SHAPES[name]
        model, inputs = get_model(name, input_shape=shape, **options)
        _CACHE[name] = (model, trace(model, inputs), inputs)
    model, gm, inputs = _CACHE[name]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return copy.deepcopy(model), copy.deepcopy(gm), inputs


def small_trace(cls: type, *, seed: int = 0, shape: tuple[int, ...] = (2, 3, 8, 8)):
    """(model, trace, inputs) of one of the small test models in ``tests.pruning.models``."""
    model = models.seeded(cls(), seed)
    inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)
    return model, trace(model, inputs), inputs


@pytest.fixture
def zoo():
    return zoo_trace
