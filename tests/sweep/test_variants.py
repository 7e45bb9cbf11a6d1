"""Sweep sections: variants built from the recipe, and every bad key or value refused at load."""

from __future__ import annotations

import pytest

from graphopt.errors import RecipeError
from graphopt.recipe import parse_recipe
from graphopt.sweep.variants import expand, variant_key

BASE = {
    "model": "tests.test_cli:tiny_cnn",
    "passes": ["fold_batchnorm", {"prune": {"ratio": 0.25}}],
    "backends": ["onnxruntime"],
    "benchmark": {"warmup": 1, "runs": 2},
}


def recipe_with(sweep: dict, **extra: object) -> object:
    return parse_recipe({**BASE, **extra, "sweep": sweep})


def test_a_grid_is_the_cartesian_product_with_each_option_set() -> None:
    recipe = recipe_with(
        {"grid": {"prune.ratio": [0.25, 0.5], "prune.importance": ["l1", "l2"], "seed": [0, 1]}}
    )
    variants = expand(recipe, recipe.sweep)
    assert len(variants) == 8
    assert [v.name for v in variants[:2]] == ["v01", "v02"]
    last = variants[-1]
    assert last.assignments == {"prune.ratio": 0.5, "prune.importance": "l2", "seed": 1}
    assert last.recipe.passes[1].options == {"ratio": 0.5, "importance": "l2"}
    assert last.recipe.seed == 1 and last.recipe.sweep is None
    assert len({v.key for v in variants}) == 8


def test_the_key_is_the_recipe_as_run_not_where_it_is_written() -> None:
    a = recipe_with({"grid": {"prune.ratio": [0.5]}}, output="out/a")
    b = recipe_with({"grid": {"prune.ratio": [0.5]}}, output="out/b")
    (va,), (vb,) = expand(a, a.sweep), expand(b, b.sweep)
    assert va.key == vb.key == variant_key(va.recipe)
    explicit = parse_recipe({**BASE, "passes": ["fold_batchnorm", {"prune": {"ratio": 0.5}}]})
    assert variant_key(explicit) == va.key  # defaults filled in: the same recipe, the same key


def test_random_draws_are_seeded_validated_and_deduplicated() -> None:
    sweep = {"random": {"prune.ratio": {"low": 0.1, "high": 0.6}}, "samples": 4, "seed": 3}
    first = expand(recipe_with(sweep), recipe_with(sweep).sweep)
    again = expand(recipe_with(sweep), recipe_with(sweep).sweep)
    assert [v.assignments for v in first] == [v.assignments for v in again]
    assert all(0.1 <= v.assignments["prune.ratio"] <= 0.6 for v in first)
    choices = recipe_with({"random": {"prune.importance": ["l1"]}, "samples": 5})
    assert len(expand(choices, choices.sweep)) == 1  # five draws of one recipe: one variant


def test_a_pass_written_twice_is_addressed_by_index() -> None:
    twice = {"passes": [{"prune": {"ratio": 0.25}}, {"prune": {"ratio": 0.25}}]}
    with pytest.raises(RecipeError, match=r"appears 2 times in passes; write passes\[0\]\.ratio"):
        recipe_with({"grid": {"prune.ratio": [0.5]}}, **twice)
    recipe = recipe_with({"grid": {"passes[1].ratio": [0.5]}}, **twice)
    (variant,) = expand(recipe, recipe.sweep)
    assert [p.options["ratio"] for p in variant.recipe.passes] == [0.25, 0.5]


def test_a_backend_option_can_be_swept() -> None:
    recipe = recipe_with({"grid": {"onnxruntime.intra_op_threads": [1, 2]}})
    variants = expand(recipe, recipe.sweep)
    assert [v.recipe.backends[0].options for v in variants] == [
        {"intra_op_threads": 1},
        {"intra_op_threads": 2},
    ]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"prunee.ratio": [0.5]}}, r"'prunee.ratio' names no pass or backend .*prune"),
        ({"grid": {"ratio": [0.5]}}, r"'ratio' is not PASS.option"),
        ({"grid": {"passes[5].ratio": [0.5]}}, r"the recipe has 2 passes"),
        ({"grid": {"prune.ratio": [0.5, 2]}}, r"variant v02 \(prune.ratio=2\): passes\[1\]"),
        ({"grid": {"prune.bogus": [1]}}, r"passes\[1\]\.prune has no option 'bogus'"),
        ({"random": {"prune.ratio": {"low": 0.2, "high": 1.5}}}, r"prune.ratio = 1.5"),
        ({"random": {"prune.ratio": {"low": 0.6, "high": 0.2}}}, r"needs low <= high"),
        ({"grid": {"prune.ratio": []}}, r"grid axis 'prune.ratio' has no values"),
        ({"grid": {}}, r"needs grid"),
        ({"grid": {"prune.ratio": [0.5]}, "random": {"seed": [1]}}, r"either grid or random"),
        ({"grid": {"prune.ratio": [0.5]}, "samples": 0}, r"sweep.samples: must be"),
        ({"grid": {"prune.ratio": [0.5]}, "colour": 1}, r"sweep has no option 'colour'"),
        ({"grid": {"prune.ratio": [0.5]}, "budgets": ["speedup.tvm >= 2"]}, r"backend 'tvm'"),
        ({"grid": {"prune.ratio": [0.5]}, "budgets": ["accuracy_drop <= 1"]}, r"task metric"),
        ({"grid": {"seed": [-1]}}, r"seed must be an integer"),
        ({"grid": {"prune.ratio": [0.5]}, "resources": {"num_cpus": 0}}, r"resources.num_cpus"),
        ("grid", r"sweep must be a mapping"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_it(sweep: object, message: str) -> None:
    with pytest.raises(RecipeError, match=message) as info:
        recipe_with(sweep)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
