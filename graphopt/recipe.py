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
    require:                        # optional budgets, checked after the run (exit 3 if one
      - speedup.onnxruntime >= 2.5  # fails); names in graphopt.budgets
      - size_mb <= 5
    sweep:                          # optional, for `graphopt sweep` (graphopt.sweep.spec)
      grid: {prune.target_macs: [0.3, 0.5]}

Everything is validated when loaded, so a typo fails before any work starts.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from graphopt.backends import get_backend
from graphopt.budgets import Requirement, parse_requirements
from graphopt.checks import is_int
from graphopt.errors import RecipeError
from graphopt.loading import parse_shape
from graphopt.passes import Pass, get_pass
from graphopt.shapes import DECLARATION_SCHEMA, check_declaration
from graphopt.sweep.spec import SweepOptions, parse_sweep

__all__ = [
    "Recipe",
    "StepSpec",
    "check_bench_counts",
    "load_recipe",
    "may_evaluate",
    "parse_recipe",
    "recipe_schema",
    "with_sweep",
]

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
    "require",
    "dynamic",
    "sweep",
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
    require: tuple[Requirement, ...] = ()
    dynamic: Any = None  # graphopt.shapes' declaration, checked against the inputs at capture
    sweep: SweepOptions | None = None  # `graphopt sweep`'s variants; `graphopt run` ignores it

    def build_passes(self) -> list[Pass]:
        return [
            get_pass(step.name, where=f"passes[{i}].{step.name}", **step.options)
            for i, step in enumerate(self.passes)
        ]

    def build_backends(self) -> list[Any]:
        return [
            get_backend(step.name, where=f"backends[{i}].{step.name}", **step.options)
            for i, step in enumerate(self.backends)
        ]

    def with_requirements(self, extra: Sequence[str]) -> Recipe:
        """This recipe with ``--require`` conditions added (validated like the recipe's)."""
        added = parse_requirements(
            list(extra),
            backends=[b.name for b in self.build_backends()],
            has_task_metric=self.evaluate is not None or may_evaluate(self.data),
            where="--require",
        )
        return replace(self, require=self.require + added)

    def as_run(self) -> dict[str, Any]:
        """The recipe with every default filled in: what provenance records and hashes."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape) if self.input_shape else None,
            "dynamic": self.dynamic,
            "seed": self.seed,
            "passes": [{p.name: p.options()} for p in self.build_passes()],
            "backends": [
                {step.name: backend.options()}
                for step, backend in zip(self.backends, self.build_backends(), strict=True)
            ],
            "benchmark": {"warmup": self.warmup, "runs": self.runs},
            "evaluate": self.evaluate,
            "data": self.data,
            "output": str(self.output),
            "require": [str(r) for r in self.require],
        }


def may_evaluate(data: str | None) -> bool:
    """A data callable may give an evaluate function; ``random`` data never does."""
    return data is not None and data != "random"


_MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of text; anything larger is not one


class _StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key written twice (PyYAML keeps the last silently,
    so a second ``passes:`` dropped the first list without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    shown = str(path)
    if path.is_dir():
        raise RecipeError(f"recipe {shown!r} is a folder; give the recipe file (.yaml or .toml)")
    if not path.is_file():
        raise RecipeError(f"recipe file {shown!r} does not exist")
    try:
        raw = path.read_bytes()[: _MAX_RECIPE_BYTES + 1]
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {shown!r}: {exc.strerror}") from exc
    if len(raw) > _MAX_RECIPE_BYTES:
        raise RecipeError(f"recipe {shown!r} is larger than 1 MiB: not a recipe")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(
            f"recipe {shown!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from exc
    if "\x00" in text:
        raise RecipeError(f"recipe {shown!r} holds NUL bytes: not a text file")
    is_toml = path.suffix.lower() == ".toml"
    try:
        # _StrictLoader is a SafeLoader: no arbitrary Python objects from a recipe.
        data = tomllib.loads(text) if is_toml else yaml.load(text, Loader=_StrictLoader)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = f"{first} {_yaml_line(exc)}".strip()
        kind = "TOML" if is_toml else "YAML"
        raise RecipeError(f"recipe {shown!r} is not valid {kind}: {detail}") from exc
    except RecursionError as exc:
        raise RecipeError(f"recipe {shown!r} is nested too deeply to be a recipe") from exc
    return parse_recipe(data, default_output=Path("out") / path.stem)


def _yaml_line(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is None:
        return ""
    return f"({problem}, line {mark.line + 1})" if problem else f"(line {mark.line + 1})"


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
    check_bench_counts(warmup, runs, where="benchmark")
    evaluate = data.get("evaluate")
    if evaluate is not None and (not isinstance(evaluate, str) or ":" not in evaluate):
        raise RecipeError("recipe key 'evaluate' must be package.module:callable")
    data_spec = data.get("data")
    if data_spec is not None and (
        not isinstance(data_spec, str) or (data_spec != "random" and ":" not in data_spec)
    ):
        raise RecipeError("recipe key 'data' must be package.module:callable or 'random'")
    output = data.get("output", default_output)
    if not isinstance(output, (str, Path)) or not str(output).strip():
        raise RecipeError(f"recipe key 'output' must be a folder path, got {output!r}")
    shape = data.get("input_shape")
    recipe = Recipe(
        model=model,
        input_shape=parse_shape(shape) if shape is not None else None,
        seed=_seed(data.get("seed", 0)),
        passes=_steps(data.get("passes") or [], "passes"),
        backends=_steps(data.get("backends") or [], "backends"),
        warmup=warmup,
        runs=runs,
        evaluate=evaluate,
        output=Path(output),
        data=data_spec,
        dynamic=check_declaration(data.get("dynamic"), where="recipe key 'dynamic'"),
    )
    recipe.build_passes()  # validates pass names and options now, before any work
    backends = recipe.build_backends()
    if "require" in data:
        requirements = parse_requirements(
            data["require"],
            backends=[b.name for b in backends],
            has_task_metric=evaluate is not None or may_evaluate(data_spec),
        )
        recipe = replace(recipe, require=requirements)
    if "sweep" in data:
        recipe = with_sweep(recipe, parse_sweep(data["sweep"]))
    return recipe


def with_sweep(recipe: Recipe, options: SweepOptions) -> Recipe:
    """``recipe`` with a sweep whose keys, values and budgets are all checked now: every
    variant is built (its passes and backends validated) before any of them runs."""
    from graphopt.sweep.variants import expand, sweep_budgets

    recipe = replace(recipe, sweep=options)
    sweep_budgets(recipe, options)
    expand(recipe, options)
    return recipe


def check_bench_counts(warmup: Any, runs: Any, *, where: str) -> None:
    """Timing loop sizes: integers, ``1 <= runs <= 100000`` and ``0 <= warmup <= 100000``."""
    if not (is_int(runs) and 1 <= runs <= 100_000 and is_int(warmup) and 0 <= warmup <= 100_000):
        raise RecipeError(
            f"{where} needs integer runs in [1, 100000] and warmup in [0, 100000], "
            f"got runs={runs!r}, warmup={warmup!r}"
        )


def _seed(value: Any) -> int:
    """A seed torch's and numpy's generators both take: an integer in [0, 2**32)."""
    if not is_int(value) or not 0 <= value < 2**32:
        raise RecipeError(f"recipe key 'seed' must be an integer in [0, 2**32), got {value!r}")
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


def recipe_schema() -> dict[str, Any]:
    """A JSON Schema for recipe files (editors validate and complete YAML/TOML with it).

    Generated from the same declarations that validate recipes: the recipe keys here, every
    registered pass's options model. Shipped as ``graphopt/schemas/recipe.schema.json``
    (``graphopt passes --schema`` prints it; a test keeps the file current).
    """
    from graphopt.passes import registered_passes

    defs: dict[str, Any] = {}
    steps = []
    for name, cls in registered_passes().items():
        schema = cls.Options.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        schema["title"] = f"{name} options"
        defs[f"pass_{name}"] = schema
        steps.append({"const": name})
        steps.append(
            {
                "type": "object",
                "properties": {
                    name: {"anyOf": [{"$ref": f"#/$defs/pass_{name}"}, {"type": "null"}]}
                },
                "required": [name],
                "additionalProperties": False,
            }
        )
    sweep = SweepOptions.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(sweep.pop("$defs", {}))
    sweep["title"] = "sweep options (graphopt sweep)"
    defs["sweep"] = sweep
    backend = {
        "anyOf": [{"type": "string"}, {"type": "object", "minProperties": 1, "maxProperties": 1}]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "graphopt recipe",
        "type": "object",
        "required": ["model"],
        "additionalProperties": False,
        "properties": {
            "model": {"type": "string", "description": "zoo name or package.module:factory"},
            "input_shape": {
                "anyOf": [
                    {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1},
                    {"type": "string", "pattern": "^[0-9]+(\\s*[,x]\\s*[0-9]+)*$"},
                ]
            },
            "dynamic": DECLARATION_SCHEMA,
            "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            "passes": {"type": "array", "items": {"anyOf": steps}},
            "backends": {"type": "array", "items": backend},
            "benchmark": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "warmup": {"type": "integer", "minimum": 0, "maximum": 100000},
                    "runs": {"type": "integer", "minimum": 1, "maximum": 100000},
                },
            },
            "evaluate": {"type": "string", "pattern": ":"},
            "data": {"type": "string"},
            "output": {"type": "string", "minLength": 1},
            "require": {
                "anyOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "object", "additionalProperties": {"type": "string"}},
                ]
            },
            "sweep": {"$ref": "#/$defs/sweep"},
        },
        "$defs": defs,
    }
