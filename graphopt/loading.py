"""Resolve the names users write (zoo models, ``package.module:callable``, shape strings)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from graphopt.capture import as_input_tuple
from graphopt.checks import is_int
from graphopt.errors import RecipeError, user_failure
from graphopt.guards import require_memory, tensor_bytes

if TYPE_CHECKING:
    from graphopt.data import TaskData

__all__ = ["load_callable", "load_data", "load_model", "parse_shape"]


def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,3,224,224"`` / ``"1x3x224x224"`` / ``[1, 3, 224, 224]`` → ``(1, 3, 224, 224)``."""
    bad = RecipeError(f"input shape must be positive integers like 1,3,224,224, got {text!r}")
    if isinstance(text, str):
        parts = re.split(r"\s*[,x]\s*", text.strip())  # an empty part (e.g. "1,3,") is an error
        if not all(re.fullmatch(r"[0-9]+", p) for p in parts):
            raise bad
        shape = tuple(int(p) for p in parts)
    elif isinstance(text, Sequence):
        # No coercion: ``true`` and ``32.7`` are not dimensions (int() made them 1 and 32).
        if not all(is_int(d) for d in text):
            raise bad
        shape = tuple(text)
    else:
        raise bad
    if not shape or any(d <= 0 for d in shape):
        raise bad
    return shape


def load_callable(spec: str, *, what: str) -> Callable[..., Any]:
    """Import ``package.module:attribute`` (the form recipes and the CLI use)."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise RecipeError(f"{what} {spec!r} must be of the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from exc
    except (Exception, SystemExit) as exc:  # the user's module failed while importing
        raise RecipeError(
            f"{what} {spec!r}: importing {module_name!r} {user_failure(exc)}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RecipeError(f"{what} {spec!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RecipeError(f"{what} {spec!r} is not callable")
    return target


def load_model(
    spec: str, *, input_shape: Sequence[int] | None = None, seed: int = 0
) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A zoo name or ``package.module:factory`` → (model in eval mode, example inputs).

    A factory returns a module, or ``(module, example_inputs)``; without example inputs from
    the factory, ``input_shape`` is required and a seeded float tensor of that shape is used.
    """
    from graphopt import zoo

    shape = parse_shape(input_shape) if input_shape is not None else None
    if shape is not None:
        require_memory(tensor_bytes(shape), f"the example input of shape {list(shape)}")
    if ":" not in spec:
        return zoo.get_model(spec, seed=seed, input_shape=shape)
    factory = load_callable(spec, what="model factory")
    try:
        produced = factory()
    except (Exception, SystemExit) as exc:
        raise RecipeError(f"model factory {spec!r} {user_failure(exc)}") from exc
    if isinstance(produced, tuple) and len(produced) != 2:
        raise RecipeError(
            f"model factory {spec!r} returned a tuple of {len(produced)}; "
            "return a module or (module, example_inputs)"
        )
    model, inputs = produced if isinstance(produced, tuple) else (produced, None)
    if not isinstance(model, nn.Module):
        raise RecipeError(f"model factory {spec!r} returned {type(model).__name__}, not nn.Module")
    if shape is not None:
        inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(seed)),)
    if inputs is None:
        raise RecipeError(f"model factory {spec!r} gave no example inputs: give an input shape")
    inputs = as_input_tuple(inputs, error=RecipeError)
    return model.eval(), inputs


def load_data(spec: str, example_inputs: tuple[torch.Tensor, ...], *, seed: int = 0) -> TaskData:
    """A recipe's ``data:`` → ``TaskData``: ``package.module:callable`` returning one, or
    ``random``: 64 synthetic calibration samples shaped like the example inputs (normal
    floats; integer inputs such as token ids drawn below the example's largest value + 1).
    Synthetic data calibrates ranges only; it says nothing about accuracy."""
    from graphopt.data import TaskData

    if spec == "random":
        generator = torch.Generator().manual_seed(seed)
        return TaskData(calibration=[_random_like(example_inputs, generator) for _ in range(8)])
    factory = load_callable(spec, what="data")
    try:
        produced = factory()
    except (Exception, SystemExit) as exc:
        raise RecipeError(f"data {spec!r} {user_failure(exc)}") from exc
    if not isinstance(produced, TaskData):
        raise RecipeError(
            f"data {spec!r} returned {type(produced).__name__}, not graphopt.data.TaskData"
        )
    return produced


def _random_like(
    inputs: tuple[torch.Tensor, ...], generator: torch.Generator, batch: int = 8
) -> tuple[torch.Tensor, ...]:
    out = []
    for t in inputs:
        shape = (batch, *t.shape[1:])
        if t.is_floating_point():
            out.append(torch.randn(shape, generator=generator, dtype=t.dtype))
        else:
            high = int(t.max()) + 1 if t.numel() else 2
            out.append(torch.randint(0, max(high, 1), shape, generator=generator, dtype=t.dtype))
    return tuple(out)
