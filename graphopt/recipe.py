"""Recipes: a YAML or TOML file that names the model, the passes, the backends and the output.

    model: resnet18                 # zoo name or package.module:factory
    input_shape: [1, 3, 224, 224]   # optional for zoo models
    passes:
      - fold_batchnorm
      - prune: {importance: l2, target_macs: 0.5}
    backends:
      - onnxruntime
      - tvm: {trials: 64}
    benchmark: {warmup: 10, runs: 50}
    evaluate: mypkg.tasks:accuracy  # optional: callable(model) -> float or {name: float}
    data: mypkg.tasks:data          # optional: callable() -> graphopt.data.TaskData (train and
                                    # calibration batches, evaluate); or `random` for synthetic
                                    # calibration inputs shaped like the example inputs
    output: out/resnet18

Everything is validated when loaded, so a typo fails before any work starts.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from graphopt.backends import get_backend
from graphopt.errors import RecipeError
from graphopt.loading import parse_shape
from graphopt.passes import Pass, get_pass

__all__ = ["Recipe", "StepSpec", "load_recipe", "parse_recipe"]

_KEYS = {
    "model",
    "input_shape",
    "seed",
    "passes",
    "backends",
    "benchmark",
    "evaluate",
    "data",
    "output",
}
_BENCH_KEYS = {"warmup", "runs"}


@dataclass(frozen=True)
class StepSpec:
    """A named step with options, as written in the recipe (a pass or a backend)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    model: str
    input_shape: tuple[int, ...] | None
    seed: int
    passes: tuple[StepSpec, ...]
    backends: tuple[StepSpec, ...]
    warmup: int
    runs: int
    evaluate: str | None
    output: Path
    data: str | None = None

    def build_passes(self) -> list[Pass]:
        return [get_pass(step.name, **step.options) for step in self.passes]

    def build_backends(self) -> list[Any]:
        return [get_backend(step.name, **step.options) for step in self.backends]


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RecipeError(f"recipe {str(path)!r} is not valid YAML/TOML: {first}") from exc
    return parse_recipe(data, default_output=Path("out") / path.stem)


def parse_recipe(data: Any, *, default_output: Path = Path("out")) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping with at least a 'model' key")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise RecipeError(
            f"unknown recipe key {unknown[0]!r}; known keys: {', '.join(sorted(_KEYS))}"
        )
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise RecipeError("recipe key 'model' must be a zoo name or package.module:factory")
    bench = data.get("benchmark") or {}
    if not isinstance(bench, dict) or set(bench) - _BENCH_KEYS:
        raise RecipeError(f"recipe key 'benchmark' takes only {sorted(_BENCH_KEYS)}")
    warmup, runs = bench.get("warmup", 10), bench.get("runs", 50)
    if not (isinstance(runs, int) and runs >= 1 and isinstance(warmup, int) and warmup >= 0):
        raise RecipeError(f"benchmark needs runs >= 1 and warmup >= 0, got {bench}")
    evaluate = data.get("evaluate")
    if evaluate is not None and (not isinstance(evaluate, str) or ":" not in evaluate):
        raise RecipeError("recipe key 'evaluate' must be package.module:callable")
    data_spec = data.get("data")
    if data_spec is not None and (
        not isinstance(data_spec, str) or (data_spec != "random" and ":" not in data_spec)
    ):
        raise RecipeError("recipe key 'data' must be package.module:callable or 'random'")
    recipe = Recipe(
        model=model,
        input_shape=parse_shape(data["input_shape"]) if data.get("input_shape") else None,
        seed=_int(data.get("seed", 0), "seed"),
        passes=_steps(data.get("passes") or [], "passes"),
        backends=_steps(data.get("backends") or [], "backends"),
        warmup=warmup,
        runs=runs,
        evaluate=evaluate,
        output=Path(data.get("output") or default_output),
        data=data_spec,
    )
    recipe.build_passes()  # validates pass names and options now, before any work
    recipe.build_backends()
    return recipe


def _int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RecipeError(f"recipe key {key!r} must be an integer, got {value!r}")
    return value


def _steps(items: Any, key: str) -> tuple[StepSpec, ...]:
    if not isinstance(items, list):
        raise RecipeError(f"recipe key {key!r} must be a list of names or {{name: options}}")
    steps = []
    for item in items:
        if isinstance(item, str):
            steps.append(StepSpec(item))
        elif isinstance(item, dict) and len(item) == 1:
            ((name, options),) = item.items()
            if options is not None and not isinstance(options, dict):
                raise RecipeError(f"options of {key} entry {name!r} must be a mapping")
            steps.append(StepSpec(str(name), dict(options or {})))
        else:
            raise RecipeError(f"each {key} entry must be a name or {{name: options}}, got {item!r}")
    return tuple(steps)
