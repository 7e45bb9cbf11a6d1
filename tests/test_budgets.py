"""Budgets as gates, provenance, the versioned report, the model card, --json, CI-log progress."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from graphopt.budgets import Requirement, check_budgets, parse_requirements
from graphopt.cli import main
from graphopt.errors import RecipeError
from graphopt.progress import Progress, library_noise_to
from graphopt.recipe import parse_recipe
from graphopt.report import report_schema
from tests.test_cli import write_recipe


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("accuracy_drop <= 1.0", Requirement("accuracy_drop", "<=", 1.0)),
        ("speedup.onnxruntime>=2.5", Requirement("speedup.onnxruntime", ">=", 2.5)),
        ("size_mb < 5", Requirement("size_mb", "<", 5.0)),
        ("metric.mean_logit > -1e3", Requirement("metric.mean_logit", ">", -1000.0)),
    ],
)
def test_requirements_parse(text: str, expected: Requirement) -> None:
    assert parse_requirements([text]) == (expected,)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["acuracy_drop <= 1"], "unknown metric 'acuracy_drop'"),
        (["size_mb <= five"], "not 'metric op number'"),
        (["size_mb => 5"], "not 'metric op number'"),
        (["speedup.tvm >= 2"], "backend 'tvm', which the run does not measure"),
        (["speedup >= 2"], "unknown metric 'speedup'"),
        (["accuracy_drop <= 1"], "needs a task metric"),
        (["size_mb <= nan"], "not 'metric op number'"),
        (42, "must be a list"),
    ],
)
def test_bad_requirements_are_recipe_errors_at_load_time(items: object, message: str) -> None:
    recipe = {"model": "resnet18", "backends": ["onnxruntime"], "require": items}
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(recipe)


def test_a_run_whose_budget_fails_exits_3_and_marks_its_artifacts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(
        tmp_path,
        evaluate="tests.test_cli:mean_output",
        require=["macs_ratio >= 100", "cosine >= 0.999", "accuracy_drop <= 0.5"],
    )
    assert main(["run", str(recipe)]) == 3
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed"
    by_name = {b["metric"]: b for b in report["budgets"]}
    assert not by_name["macs_ratio"]["passed"] and by_name["macs_ratio"]["value"] == 1.0
    assert by_name["cosine"]["passed"] and by_name["cosine"]["value"] > 0.99999
    assert by_name["accuracy_drop"]["passed"]  # fold_batchnorm keeps the metric
    manifest = json.loads((out / ".graphopt-output.json").read_text())
    assert manifest["status"] == "failed" and "model.onnx" in manifest["files"]
    card = (out / "report.md").read_text().split("## ")[0]
    assert "Budgets: FAILED" in card and "`macs_ratio >= 100`" in card and "FAIL" in card
    assert {"model.pt2", "model.onnx"} <= {p.name for p in out.iterdir()}


def test_require_on_the_command_line_adds_to_the_recipe(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, require=["size_mb <= 100"])
    assert main(["run", str(recipe), "--require", "speedup.onnxruntime >= 0.01"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "passed"
    assert [b["requirement"] for b in report["budgets"]] == [
        "size_mb <= 100",
        "speedup.onnxruntime >= 0.01",
    ]


def test_an_unknown_require_flag_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path)
    assert main(["run", str(recipe), "--require", "latency_ms.tvm <= 3"]) == 2
    assert "backend 'tvm'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_json_prints_the_summary_on_stdout_and_tables_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    recipe = write_recipe(tmp_path, require=["size_mb <= 100"])
    assert main(["run", str(recipe), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["status"] == "passed" and summary["speedup"]["onnxruntime"] > 0
    assert summary["output"] == str(tmp_path / "out") and "model.onnx" in summary["files"]
    assert set(summary["artifacts"]) >= {"model.pt2", "model.onnx", "report.png"}
    assert "stages" in captured.err  # the tables went to stderr


def test_report_carries_provenance_and_validates_against_its_schema(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, passes=[{"prune": {"ratio": 0.25}}])
    assert main(["run", str(recipe)]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    prov = report["provenance"]
    assert report["schema_version"] == "1.0" and report["status"] == "unchecked"
    assert prov["versions"]["torch"] and prov["versions"]["onnxruntime"]
    assert prov["machine"]["cores"] >= 1 and prov["machine"]["torch_threads"] >= 1
    assert prov["recipe"]["passes"][0]["prune"]["ratio"] == 0.25
    assert "importance" in prov["recipe"]["passes"][0]["prune"]  # defaults filled in
    assert len(prov["recipe_sha256"]) == 64 and prov["inputs"]["shapes"] == [[1, 3, 16, 16]]
    assert prov["started_at"] <= prov["finished_at"]
    from graphopt.provenance import sha256_file

    for name, digest in prov["artifacts"].items():
        assert sha256_file(out / name) == digest, name


def test_the_schema_rejects_a_report_without_its_version() -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"model": "x"}, report_schema())


def test_check_budgets_fails_what_it_cannot_measure(tmp_path: Path) -> None:
    from graphopt import zoo
    from graphopt.runner import compress

    model, inputs = zoo.get_model("resnet18", input_shape=(1, 3, 32, 32))
    run = compress(model, inputs, [])
    (check,) = check_budgets(run.report, [Requirement("metric_drop", "<=", 1.0)])
    assert not check.passed and check.value is None and "no task metric" in check.note
    (fid,) = check_budgets(run.report, [Requirement("cosine", ">=", 0.9999)])
    assert fid.passed and fid.value == 1.0


def test_progress_prints_plain_lines_and_a_heartbeat_off_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(stream, heartbeat_s=0.3, announce_after_s=0.2) as say:
        say("loading")  # shorter than announce_after_s: never printed
        say("tuning conv2d")
        time.sleep(1.2)
        say("tuning conv2d")  # the same step again: no second line
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("] tuning conv2d") and not any("loading" in x for x in lines)
    assert sum("still tuning conv2d" in line for line in lines) >= 2


def test_library_noise_goes_to_the_log_and_graphopt_lines_to_stderr(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    log = tmp_path / "graphopt.log"
    with library_noise_to(log) as real:
        os.write(2, b'Unknown schedule rule "meta_schedule.pool_max"\n')  # as C++ code writes
        real.write("graphopt line\n")
        real.flush()
    err = capfd.readouterr().err
    assert "graphopt line" in err and "pool_max" not in err
    assert "pool_max" in log.read_text()


def test_counted_loops_report_through_the_runs_progress() -> None:
    from graphopt.progress import counted

    stream = io.StringIO()
    with Progress(stream, heartbeat_s=0.3, announce_after_s=0.1) as say:
        say("running 1 pass(es)")
        with counted("calibrating", 3) as advance:
            advance()
            advance()
            time.sleep(0.9)
    assert any("calibrating 2/3" in line for line in stream.getvalue().splitlines())
