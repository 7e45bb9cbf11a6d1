"""The model zoo: seeded reference architectures with default example inputs.

Why a zoo of our own: passes are tested and benchmarked on the architectures users compress
(ResNet, MobileNetV2, VGG, a BERT-like encoder, a DenseNet block), but torchvision and timm
cannot be installed here and nothing may be downloaded. Every model is built from a seed, has
non-trivial BatchNorm statistics (see :mod:`graphopt.zoo.seeding`) and comes in eval mode::

    model, example_inputs = get_model("resnet18", seed=0, input_shape=(1, 3, 64, 64))
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from graphopt.errors import RecipeError
from graphopt.zoo.densenet import densenet_tiny
from graphopt.zoo.mobilenet import mobilenet_v2
from graphopt.zoo.resnet import resnet18, resnet50
from graphopt.zoo.seeding import randomize_norm_stats, seeded, seeded_build
from graphopt.zoo.transformer import transformer
from graphopt.zoo.vgg import vgg11_bn

__all__ = [
    "ZOO",
    "ZooEntry",
    "get_model",
    "list_models",
    "make_example_inputs",
    "randomize_norm_stats",
    "seeded",
    "seeded_build",
]

InputKind = Literal["image", "tokens"]


@dataclass(frozen=True)
class ZooEntry:
    """One zoo architecture: how to build it and what its default example input looks like.

    ``builder`` takes keyword-only options (always ``num_classes``); ``input_shape`` is the
    default example input shape, an image batch ``(N, 3, H, W)`` or token ids ``(N, seq)``.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    input_kind: InputKind
    description: str

    def options(self) -> list[str]:
        """The keyword options ``builder`` accepts (passed through ``get_model(**options)``)."""
        return list(inspect.signature(self.builder).parameters)


_IMAGENET = (1, 3, 224, 224)

ZOO: dict[str, ZooEntry] = {
    entry.name: entry
    for entry in (
        ZooEntry("resnet18", resnet18, _IMAGENET, "image", "ResNet-18, torchvision layout"),
        ZooEntry("resnet50", resnet50, _IMAGENET, "image", "ResNet-50, torchvision layout"),
        ZooEntry(
            "mobilenet_v2", mobilenet_v2, _IMAGENET, "image", "MobileNetV2, depthwise + ReLU6"
        ),
        ZooEntry("vgg11_bn", vgg11_bn, _IMAGENET, "image", "VGG-11 with BatchNorm, no skips"),
        ZooEntry(
            "densenet_tiny",
            densenet_tiny,
            (1, 3, 32, 32),
            "image",
            "two dense blocks: concat + pre-activation BN, for pruning tests",
        ),
        ZooEntry(
            "transformer",
            transformer,
            (1, 32),
            "tokens",
            "BERT-like encoder: q/k/v linears + SDPA, post-LN, pooled classifier",
        ),
    )
}


def list_models() -> list[str]:
    """The names ``get_model`` accepts, sorted."""
    return sorted(ZOO)


def get_model(
    name: str,
    *,
    seed: int = 0,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    **options: Any,
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Build zoo model ``name`` in eval mode and seeded example inputs for it.

    ``num_classes`` overrides the architecture's default head size; ``input_shape`` the
    default example input shape (e.g. ``(1, 3, 64, 64)`` to keep tests fast); any other
    keyword goes to the architecture's builder (e.g. ``num_layers=4`` for the transformer).
    The same ``seed`` gives the same weights, statistics and inputs.
    """
    entry = _lookup(name)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise RecipeError(
            f"zoo model {name!r} has no option(s) {unknown}; its options are {entry.options()}"
        )
    if num_classes is not None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise RecipeError(f"num_classes must be a positive int, got {num_classes!r}")
        options["num_classes"] = num_classes
    model = seeded_build(lambda: entry.builder(**options), seed)
    shape = entry.input_shape if input_shape is None else tuple(input_shape)
    return model, make_example_inputs(entry, model, shape, seed=seed)


def make_example_inputs(
    entry: ZooEntry, model: nn.Module, shape: tuple[int, ...], *, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Seeded example inputs of ``shape`` for a model of ``entry`` (checked against its kind)."""
    if not all(isinstance(d, int) and d > 0 for d in shape):
        raise RecipeError(f"input_shape must be positive ints, got {shape!r}")
    generator = torch.Generator().manual_seed(seed)
    if entry.input_kind == "tokens":
        max_len = int(getattr(model, "max_len", shape[-1]))
        if len(shape) != 2 or shape[1] > max_len:
            raise RecipeError(
                f"zoo model {entry.name!r} takes token ids of shape (batch, seq) with "
                f"seq <= {max_len}, got input_shape={shape}"
            )
        vocab_size = int(getattr(model, "vocab_size"))  # noqa: B009 - not on nn.Module's type
        return (torch.randint(0, vocab_size, shape, generator=generator),)
    if len(shape) != 4 or shape[1] != 3:
        raise RecipeError(
            f"zoo model {entry.name!r} takes images of shape (batch, 3, height, width), "
            f"got input_shape={shape}"
        )
    return (torch.randn(shape, generator=generator),)


def _lookup(name: str) -> ZooEntry:
    entry = ZOO.get(name)
    if entry is None:
        raise RecipeError(f"unknown zoo model {name!r}; known models: {', '.join(list_models())}")
    return entry
