"""Every example recipe is valid: known keys, passes, options and backends (checked on load)."""

from pathlib import Path

import pytest

from graphopt.recipe import load_recipe

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_recipe_loads(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.passes and recipe.backends
    assert recipe.output.name == path.stem


def test_the_examples_are_there() -> None:
    assert {"digits.yaml", "prune.yaml", "quantize.yaml"} <= {p.name for p in EXAMPLES}
