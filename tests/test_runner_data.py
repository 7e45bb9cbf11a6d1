"""Recipes with task data: `data:` parsing, synthetic calibration, the task metric after every
stage, validation kept apart from the test metric, and a failing task callable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from graphopt.cli import main
from graphopt.data import Batches, TaskData
from graphopt.errors import RecipeError
from graphopt.loading import load_data
from graphopt.recipe import parse_recipe
from tests.test_cli import tiny_cnn, write_recipe

CALLS: dict[str, int] = {"evaluate": 0, "validate": 0}


def _x(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def tiny_task() -> TaskData:
    """Random images with labels from a fixed teacher: enough for recovery to have a target."""
    model, _ = tiny_cnn()
    x = _x(64, 1)
    with torch.no_grad():
        y = model(x).argmax(1)
    test_x, val_x = _x(32, 2), _x(32, 3)

    def score(data: torch.Tensor, key: str):
        def metric(m: nn.Module) -> dict[str, float]:
            CALLS[key] += 1
            with torch.no_grad():
                agree = (m(data).argmax(1) == model(data).argmax(1)).float().mean()
            return {"agreement": 100 * float(agree)}

        return metric

    return TaskData(
        train=Batches(x, y, batch_size=16, shuffle=True),
        calibration=Batches(x, batch_size=16, labels=False),
        evaluate=score(test_x, "evaluate"),
        validate=score(val_x, "validate"),
    )


def failing_task() -> TaskData:
    raise RuntimeError("no such dataset")


def test_data_key_is_validated() -> None:
    base = {"model": "resnet18"}
    assert parse_recipe({**base, "data": "random"}).data == "random"
    assert parse_recipe({**base, "data": "pkg.mod:fn"}).data == "pkg.mod:fn"
    for bad in (5, "nocolon", ""):
        with pytest.raises(RecipeError, match="data"):
            parse_recipe({**base, "data": bad})


def test_random_data_is_shaped_like_the_inputs() -> None:
    images = load_data("random", (torch.randn(1, 3, 8, 8),))
    tokens = load_data("random", (torch.randint(0, 50, (1, 12)),))
    assert images.train is None and images.evaluate is None
    assert all(b[0].shape == (8, 3, 8, 8) for b in images.calibration)
    assert all(b[0].dtype == torch.int64 and int(b[0].max()) < 50 for b in tokens.calibration)
    with pytest.raises(RecipeError, match="raised RuntimeError"):
        load_data("tests.test_runner_data:failing_task", (torch.randn(1, 3, 8, 8),))
    with pytest.raises(RecipeError, match=r"not graphopt\.data\.TaskData"):
        load_data("tests.test_cli:tiny_cnn", (torch.randn(1, 3, 8, 8),))


def test_recipe_with_task_data_reports_the_metric_after_every_stage(tmp_path: Path) -> None:
    CALLS.update(evaluate=0, validate=0)
    recipe = write_recipe(
        tmp_path,
        data="tests.test_runner_data:tiny_task",
        passes=[
            {"prune": {"ratio": 0.5}},
            {"recover": {"steps": 6, "eval_every": 3}},
            {"quantize": {"calibration": {"samples": 32}}},
        ],
    )
    assert main(["run", str(recipe)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = report["stages"]
    assert [s["name"] for s in stages] == ["capture", "prune", "recover", "quantize"]
    assert all("agreement" in s["task_metric"] for s in stages)
    assert report["task_metric"]["original"]["agreement"] == 100.0
    assert CALLS["evaluate"] == len(stages)  # the test metric only reports, once per stage
    assert CALLS["validate"] >= 2  # recovery chose its checkpoint on validation data
    assert stages[-1]["stats"]["layers_int8"] == 2


def test_quantize_without_data_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path, passes=["quantize"])
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "calibration data" in err and "data:" in err
    assert not (tmp_path / "out").exists()


def test_random_data_calibrates_a_recipe(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, data="random", passes=["quantize"])
    assert main(["run", str(recipe)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["stages"][-1]["stats"]["calibration_samples"] == 64


def test_a_failing_evaluate_is_one_line_and_its_traceback_shows_with_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path, evaluate="tests.test_cli:broken_metric")
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dataset missing" in err
    assert "Traceback" not in err
    assert main(["run", str(recipe), "--debug"]) == 2
    err = capsys.readouterr().err
    assert err.count("Traceback") == 1 and "dataset missing" in err
