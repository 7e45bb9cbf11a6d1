"""``graphopt inspect MODEL --groups``: coupled pruning groups, members, frozen units."""

from __future__ import annotations

import pytest

from graphopt.capture import trace
from graphopt.cli import main
from graphopt.pruning import find_groups
from graphopt.zoo import get_model


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps at 80 columns when not on a terminal


def test_inspect_groups_lists_every_group_with_members_and_frozen_reasons(
    wide: None, capsys: pytest.CaptureFixture
) -> None:
    argv = ["inspect", "resnet18", "--input-shape", "1,3,32,32", "--groups"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    model, inputs = get_model("resnet18", input_shape=(1, 3, 32, 32))
    groups = find_groups(trace(model, inputs))
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 4}
    assert {g.id for g in groups} <= set(rows)
    stage = rows["layer1.0.conv1"]  # a basic block's inner conv: out, its BN, next conv's in
    assert "out: layer1.0.conv1; norm: layer1.0.bn1; in: layer1.0.conv2" in stage
    cells = [cell.strip() for cell in stage.split("│")[1:-1]]
    assert cells[1:3] == ["64", "1"] and cells[4] == "-"
    residual = rows["layer2.0.downsample.0"]  # coupled by the residual adds of stage 2
    assert "layer2.0.downsample.0, layer2.0.conv2, layer2.1.conv2" in residual
    assert "all: reaches the model output" in rows["fc"]
    frozen = sum(g.frozen for g in groups)
    assert f"{len(groups)} groups: {len(groups) - frozen} prunable, 0 partially frozen, " in out
    assert "MACs" in out  # the cost table is still printed


def test_inspect_groups_shows_partially_frozen_units(
    wide: None, capsys: pytest.CaptureFixture
) -> None:
    argv = ["inspect", "tests.pruning.models:GroupedAndSplit", "--input-shape", "2,3,8,8"]
    assert main([*argv, "--groups", "--top", "1"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("│ conv1 "))
    assert "2 of 4: aten.chunk.default at chunk keeps one channel per chunk" in line
    assert "groups: grouped, depthwise" in line  # 4 conv groups of 4 channels are the units
    assert "1 partially frozen" in out


def test_inspect_groups_errors_are_one_line(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "no_such_model", "--groups"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graphopt: error: unknown zoo model")
