"""Hostile or corrupted plan files: each gives one GraphoptError line naming file and problem.

A plan decides which channels are cut, so nothing in it may be coerced (1.9 → 1, true → 1)
or crash the loader with a Python-internal error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graphopt.errors import GraphoptError
from graphopt.pruning import PruningPlan
from graphopt.pruning.plan import FORMAT


def _plan_text(remove: str, units: str = "16", extra: str = "") -> str:
    return (
        f'{{"format": "{FORMAT}", "source": "Net", "ignore": ["fc"]{extra}, '
        f'"groups": {{"conv1": {{"units": {units}, "remove": {remove}}}}}}}'
    )


def _load_error(path: Path) -> str:
    with pytest.raises(GraphoptError) as info:
        PruningPlan.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (_plan_text("[1, Infinity]"), "contains Infinity"),
        (_plan_text("[1, -Infinity]"), "contains -Infinity"),
        (_plan_text("[NaN]"), "contains NaN"),
        (_plan_text("[1]", units="NaN"), "contains NaN"),
        (_plan_text("[1e999]"), "unit index Infinity (number) is not an integer"),
        (_plan_text("[1.9]"), "unit index 1.9 (number) is not an integer"),
        (_plan_text("[2.0]"), "unit index 2.0 (number) is not an integer"),
        (_plan_text("[true]"), "unit index true (boolean) is not an integer"),
        (_plan_text('["3"]'), 'unit index "3" (string) is not an integer'),
        (_plan_text("[null]"), "unit index null"),
        (_plan_text("[-1]"), "unit index -1 out of range (0..15)"),
        (_plan_text("[16]"), "unit index 16 out of range (0..15)"),
        (_plan_text("[3, 3]"), "lists units [3] more than once"),
        (_plan_text("[1]", units="16.5"), "'units' must be a positive integer"),
        (_plan_text("[1]", units="true"), "'units' must be a positive integer"),
        (_plan_text("[1]", units="0"), "'units' must be a positive integer"),
        (_plan_text('"1,2"'), "'remove' must be a list"),
        (_plan_text("[1]", extra=', "source": "Other"'), "key 'source' appears twice"),
        (_plan_text("[" + "9" * 5000 + "]"), "not valid JSON"),
        (f'{{"format": "{FORMAT}", "groups": [1]}}', "'groups' must be an object"),
        (f'{{"format": "{FORMAT}", "groups": {{"conv1": [1]}}}}', "must be an object with"),
        (f'{{"format": "{FORMAT}", "ignore": "fc"}}', "'ignore' must be a list"),
        (f'{{"format": "{FORMAT}", "source": 3}}', "'source' must be a string"),
        ('{"format": "graphopt.pruning_plan/1",', "not valid JSON"),
        ("[1, 2]", "not a pruning plan"),
        ("", "not valid JSON"),
    ],
)
def test_a_hostile_plan_is_one_clear_error(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text, encoding="utf-8")
    assert problem in _load_error(path)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _load_error(path)


def test_deep_nesting_inside_a_plan_is_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text(_plan_text("[" * 100_000 + "]" * 100_000))
    assert "nested too deeply" in _load_error(path)


def test_bytes_that_are_not_utf8_are_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(_plan_text("[1]", extra=', "note": "caf\xe9"').encode("latin-1"))
    assert "not UTF-8 text (byte 0xe9 at offset" in _load_error(path)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + _plan_text("[1, 4]").encode())
    plan = PruningPlan.load(path)
    assert dict(plan.removals) == {"conv1": (1, 4)} and dict(plan.units) == {"conv1": 16}


def test_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    assert "cannot read" in _load_error(tmp_path)


def test_a_plan_saved_then_loaded_is_unchanged_and_strict_types_survive(tmp_path: Path) -> None:
    plan = PruningPlan({"conv1": [np.int64(3), torch.tensor(1)]}, {"conv1": 16}, ("fc",), "Net")
    assert dict(plan.removals) == {"conv1": (1, 3)}
    assert all(type(i) is int for i in plan.removals["conv1"])
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    assert json.loads((tmp_path / "plan.json").read_text())["groups"]["conv1"]["remove"] == [1, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary file left


@pytest.mark.parametrize("bad", [1.9, 2.0, True, "3", None])
def test_a_plan_built_in_python_refuses_non_integer_indices(bad: object) -> None:
    with pytest.raises(GraphoptError, match=r"group 'conv1' unit index .* not an integer"):
        PruningPlan({"conv1": [bad]})


def test_a_plan_built_in_python_refuses_a_non_integer_unit_count() -> None:
    with pytest.raises(GraphoptError, match=r"unit count 16\.0 .* not an integer"):
        PruningPlan({"conv1": [1]}, {"conv1": 16.0})  # type: ignore[dict-item]
