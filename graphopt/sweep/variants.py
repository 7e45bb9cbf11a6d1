"""A sweep's variants: the base recipe with each assignment of the swept keys applied.

Every variant is built and validated when the recipe is loaded (its passes and backends are
constructed, so a bad value fails as ``sweep variant v03 (prune.target_macs=2): passes[0].…``)
and keyed by :func:`variant_key`, the sha256 of the recipe it runs: two sweeps that share a
variant share its cached result.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from dataclasses import dataclass, replace
from typing import Any

import graphopt
from graphopt.budgets import Requirement, parse_requirements
from graphopt.errors import RecipeError
from graphopt.loading import parse_shape
from graphopt.provenance import sha256_json
from graphopt.recipe import Recipe, StepSpec, may_evaluate
from graphopt.sweep.spec import TOP_LEVEL_KEYS, Range, SweepOptions

__all__ = ["Variant", "expand", "sweep_budgets", "variant_key"]

_INDEXED = re.compile(r"^(passes|backends)\[(\d+)\]\.(\w+)$")


@dataclass(frozen=True)
class Variant:
    """One point of the sweep: its name (``v01``…), what it sets, the recipe it runs, its key."""

    name: str
    assignments: dict[str, Any]
    recipe: Recipe
    key: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_show(v)}" for k, v in self.assignments.items())


def variant_key(recipe: Recipe) -> str:
    """sha256 of the recipe as run (defaults filled in) and graphopt's version.

    The output folder is left out: where a result is written does not change it. The version
    is in: another graphopt may compute another result. The key does not see the user's own
    code (a model factory, an evaluate function): after editing it, clear the cache.
    """
    as_run = {k: v for k, v in recipe.as_run().items() if k != "output"}
    return sha256_json({"recipe": as_run, "graphopt": graphopt.__version__})


def expand(recipe: Recipe, options: SweepOptions) -> list[Variant]:
    """Every variant of ``options`` over ``recipe``, validated; duplicates are dropped."""
    axes = options.grid or options.random
    for key in axes:
        _resolve(recipe, key)  # a bad key fails once, before any value is tried
    if options.grid:
        keys = list(options.grid)
        points = [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*options.grid.values())
        ]
    else:
        _check_ranges(recipe, options.random)
        rng = random.Random(options.seed)
        points = [
            {key: _draw(rng, space) for key, space in options.random.items()}
            for _ in range(options.samples)
        ]
    variants: list[Variant] = []
    seen: set[str] = set()
    width = len(str(len(points)))
    for point in points:
        name = f"v{len(variants) + 1:0{max(2, width)}d}"
        built = _apply(recipe, point, where=f"sweep variant {name} ({_label(point)})")
        key = variant_key(built)
        if key not in seen:
            seen.add(key)
            variants.append(Variant(name, point, built, key))
    return variants


def sweep_budgets(recipe: Recipe, options: SweepOptions) -> tuple[Requirement, ...]:
    """``sweep.budgets`` parsed like ``require:`` (names the run cannot measure are errors)."""
    return parse_requirements(
        list(options.budgets),
        backends=[step.name for step in recipe.backends],
        has_task_metric=recipe.evaluate is not None or may_evaluate(recipe.data),
        where="sweep.budgets",
    )


# ---- keys -------------------------------------------------------------------------------------
def _resolve(recipe: Recipe, key: str) -> tuple[str, int, str]:
    """``(kind, index, option)`` for a swept key: ``passes``/``backends``/``top`` and where."""
    if key in TOP_LEVEL_KEYS:
        return "top", -1, key
    match = _INDEXED.match(key)
    if match:
        kind, index, option = match.group(1), int(match.group(2)), match.group(3)
        steps = getattr(recipe, kind)
        if index >= len(steps):
            raise RecipeError(f"sweep key {key!r}: the recipe has {len(steps)} {kind}")
        return kind, index, option
    name, dot, option = key.partition(".")
    if not dot or not option or "." in option:
        raise RecipeError(
            f"sweep key {key!r} is not PASS.option, passes[i].option, BACKEND.option or one of "
            f"{', '.join(TOP_LEVEL_KEYS)}"
        )
    for kind in ("passes", "backends"):
        found = [i for i, step in enumerate(getattr(recipe, kind)) if step.name == name]
        if len(found) > 1:
            raise RecipeError(
                f"sweep key {key!r}: {name!r} appears {len(found)} times in {kind}; "
                f"write {kind}[{found[0]}].{option} (indices {found})"
            )
        if found:
            return kind, found[0], option
    names = ", ".join(s.name for s in (*recipe.passes, *recipe.backends)) or "none"
    raise RecipeError(f"sweep key {key!r} names no pass or backend of the recipe (it has {names})")


def _apply(recipe: Recipe, point: dict[str, Any], *, where: str) -> Recipe:
    """The base recipe with ``point`` set, its passes and backends built to validate it."""
    passes, backends = list(recipe.passes), list(recipe.backends)
    top: dict[str, Any] = {}
    for key, value in point.items():
        kind, index, option = _resolve(recipe, key)
        if kind == "top":
            top[option] = _top_level(option, value, where)
            continue
        steps = passes if kind == "passes" else backends
        step = steps[index]
        steps[index] = StepSpec(step.name, {**step.options, option: value})
    built = replace(recipe, passes=tuple(passes), backends=tuple(backends), sweep=None, **top)
    try:
        built.build_passes()
        built.build_backends()
    except RecipeError as exc:
        raise RecipeError(f"{where}: {exc}") from None
    return built


def _top_level(option: str, value: Any, where: str) -> Any:
    if option == "input_shape":
        return parse_shape(value)
    if option == "seed":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise RecipeError(f"{where}: seed must be an integer in [0, 2**32), got {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{where}: {option} must be a string, got {value!r}")
    return value


def _check_ranges(recipe: Recipe, space: dict[str, Range | list[Any]]) -> None:
    """Both ends of every range, so a range reaching outside an option's bounds fails now."""
    for key, axis in space.items():
        if isinstance(axis, Range):
            for end in (axis.low, axis.high):
                value = _cast(axis, end)
                _apply(recipe, {key: value}, where=f"sweep.random {key} = {_show(value)}")


def _draw(rng: random.Random, axis: Range | list[Any]) -> Any:
    if isinstance(axis, list):
        return axis[rng.randrange(len(axis))]
    if axis.log:
        value = math.exp(rng.uniform(math.log(axis.low), math.log(axis.high)))
    else:
        value = rng.uniform(axis.low, axis.high)
    return _cast(axis, value)


def _cast(axis: Range, value: float) -> Any:
    """Integers when both ends are integers (a channel count), else 4 significant digits."""
    if isinstance(axis.low, int) and isinstance(axis.high, int):
        return round(value)
    return float(f"{value:.4g}")


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in point.items())


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
