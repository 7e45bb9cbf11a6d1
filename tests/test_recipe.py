from pathlib import Path

import pytest
import torch
from torch import nn

from graphopt.errors import RecipeError
from graphopt.loading import load_model, parse_shape
from graphopt.recipe import load_recipe, parse_recipe


def test_parse_shape_forms() -> None:
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x32x32") == (1, 3, 32, 32)
    assert parse_shape([2, 8]) == (2, 8)
    for bad in ("1,three", "", "0,3", "-1,2", "1,3,x", "1,3,"):
        with pytest.raises(RecipeError, match="input shape"):
            parse_shape(bad)


def test_recipe_yaml_and_toml(tmp_path: Path) -> None:
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text(
        "model: resnet18\ninput_shape: [1, 3, 32, 32]\npasses: [fold_batchnorm]\n"
        "backends: [onnxruntime, {tvm: {trials: 0}}]\nbenchmark: {runs: 3, warmup: 1}\n"
    )
    recipe = load_recipe(yaml_file)
    assert recipe.model == "resnet18" and recipe.input_shape == (1, 3, 32, 32)
    assert [s.name for s in recipe.passes] == ["fold_batchnorm"]
    assert [s.name for s in recipe.backends] == ["onnxruntime", "tvm"]
    assert recipe.runs == 3 and recipe.output == Path("out") / "r"
    toml_file = tmp_path / "r.toml"
    toml_file.write_text('model = "vgg11_bn"\npasses = ["fold_batchnorm"]\noutput = "o"\n')
    assert load_recipe(toml_file).output == Path("o")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": "resnet18", "pases": []}, r"unknown recipe key 'pases'"),
        ({"passes": []}, r"'model'"),
        ({"model": "resnet18", "passes": ["fold_bn"]}, r"unknown pass 'fold_bn'"),
        ({"model": "resnet18", "passes": [{"fold_batchnorm": {"x": 1}}]}, r"no option 'x'"),
        ({"model": "resnet18", "backends": ["tensorrt"]}, r"tensorrt"),
        ({"model": "resnet18", "benchmark": {"runs": 0}}, r"runs in \[1, 100000\]"),
        ({"model": "resnet18", "input_shape": "1,a"}, r"input shape"),
        ({"model": "resnet18", "evaluate": "no_colon"}, r"evaluate"),
        ("just a string", r"mapping"),
    ],
)
def test_bad_recipes_name_the_problem(data, message) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(data)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def tiny_factory() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 2))


def factory_with_inputs() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return nn.Sequential(nn.Linear(4, 2)), (torch.randn(3, 4),)


def raising_factory() -> nn.Module:
    raise ValueError("no weights here")


def test_load_model_from_factory() -> None:
    model, inputs = load_model("tests.test_recipe:tiny_factory", input_shape="2,4")
    assert isinstance(model, nn.Module) and inputs[0].shape == (2, 4)
    model, inputs = load_model("tests.test_recipe:factory_with_inputs")
    assert inputs[0].shape == (3, 4)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.test_recipe:raising_factory", r"raised ValueError: no weights here"),
        ("tests.test_recipe:tiny_factory", r"give an input shape"),
        ("tests.test_recipe:missing", r"has no attribute"),
        ("no_such_pkg.mod:f", r"cannot import"),
        ("not_a_zoo_model", r"unknown zoo model"),
    ],
)
def test_load_model_errors(spec, message) -> None:
    with pytest.raises(RecipeError, match=message):
        load_model(spec)


def test_an_upper_case_toml_suffix_is_read_as_toml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.TOML"
    path.write_text('model = "resnet18"\npasses = ["fold_batchnorm"]\n')
    recipe = load_recipe(path)
    assert recipe.model == "resnet18" and recipe.passes[0].name == "fold_batchnorm"


def test_a_yaml_key_written_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("model: resnet18\npasses: [fold_batchnorm]\npasses: []\n")
    with pytest.raises(RecipeError, match=r"duplicate key 'passes'.*line 3"):
        load_recipe(path)


@pytest.mark.parametrize("shape", [[1, 3, True, 8], [1, 3, 32.7, 8], [], "1,3,x", "1.5,3"])
def test_input_shapes_are_not_coerced(shape: object) -> None:
    with pytest.raises(RecipeError, match="input shape"):
        parse_recipe({"model": "resnet18", "input_shape": shape})


def test_the_shipped_recipe_schema_is_current_and_validates_the_examples() -> None:
    """graphopt/schemas/recipe.schema.json is what `graphopt passes --schema` prints, and every
    example recipe validates against it (editors can point at the file)."""
    import json

    import jsonschema
    import yaml

    from graphopt.recipe import recipe_schema

    root = Path(__file__).resolve().parents[1]
    shipped = json.loads((root / "graphopt" / "schemas" / "recipe.schema.json").read_text())
    assert shipped == json.loads(json.dumps(recipe_schema())), (
        "regenerate: graphopt passes --schema"
    )
    for path in sorted((root / "examples").glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), shipped)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "resnet18", "passes": [{"prune": {"ratio": 2}}]}, shipped)
