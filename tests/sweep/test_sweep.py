"""``graphopt sweep`` end to end on a real local Ray runtime, the cache, and the no-Ray path.

One Ray runtime (2 CPUs) serves the module: starting one costs ~15 s here. Variants are the
tiny CNN of the CLI tests with fold_batchnorm + prune at two ratios, and a model factory that
fails, on ONNX Runtime with 2 timed runs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from graphopt.cli import main
from graphopt.recipe import parse_recipe
from graphopt.sweep import executor
from graphopt.sweep.run import sweep

ray = pytest.importorskip("ray")

RECIPE = {
    "model": "tests.test_cli:tiny_cnn",
    "passes": ["fold_batchnorm", {"prune": {"ratio": 0.25}}],
    "backends": ["onnxruntime"],
    "benchmark": {"warmup": 1, "runs": 2},
}


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def write_recipe(tmp_path: Path, sweep_section: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "sweep": sweep_section}))
    return path


def test_a_ray_sweep_reports_every_variant_and_a_rerun_runs_nothing(
    ray_runtime: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    recipe = write_recipe(
        tmp_path,
        {
            "grid": {
                "model": ["tests.test_cli:tiny_cnn", "tests.sweep.factories:broken"],
                "prune.ratio": [0.25, 0.5],
            },
            "budgets": ["macs_ratio >= 1.5"],
            "cache_dir": str(cache),
        },
    )
    out = tmp_path / "out"
    assert main(["sweep", str(recipe), "--output", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["counts"] == {"ok": 2, "failed": 2, "error": 0, "total": 4}
    document = json.loads((out / "sweep.json").read_text())
    assert document["mode"] == "ray" and document["cpus"] == 2
    rows = {r["name"]: r for r in document["variants"]}
    assert [r["status"] for r in rows.values()] == ["ok", "ok", "failed", "failed"]
    for name in ("v03", "v04"):  # the broken factory: one line naming it, the others went on
        assert "tests.sweep.factories:broken" in rows[name]["error"]
        assert "boom" in rows[name]["error"] and "\n" not in rows[name]["error"]
    light, heavy = rows["v01"], rows["v02"]
    for row in (light, heavy):
        assert row["params"] > 0 and row["macs"] > 0 and row["size_mb"] > 0
        assert row["latency_ms"] > 0 and row["speedup"] > 0 and row["backend"] == "onnxruntime"
        assert 0 < row["cosine"] <= 1 + 1e-6
    assert heavy["macs"] < light["macs"] and heavy["macs_ratio"] > light["macs_ratio"] > 1
    assert document["budgets"] == [{"budget": "macs_ratio >= 1.5", "best": "v02"}]
    assert document["chosen"] == "v02" and document["pareto_front"]
    report = json.loads((out / "report.json").read_text())  # the chosen variant, as `run` writes
    assert report["provenance"]["recipe"]["passes"][1]["prune"]["ratio"] == 0.5
    for name in ("model.pt2", "model.onnx", "report.md", "sweep.md", "sweep.png"):
        assert (out / name).stat().st_size > 0
    assert "| v03 |" in (out / "sweep.md").read_text()
    assert len(list(cache.iterdir())) == 2  # finished variants only; failures are retried

    # The same two good variants again, from another sweep: nothing runs.
    calls: list[object] = []
    again = parse_recipe(
        {**RECIPE, "sweep": {"grid": {"prune.ratio": [0.25, 0.5]}, "cache_dir": str(cache)}}
    )
    real = executor.run_variant
    try:
        executor.run_variant = lambda *a, **k: calls.append(a) or real(*a, **k)  # type: ignore[assignment]
        result, _ = sweep(again, _folder(tmp_path))
    finally:
        executor.run_variant = real  # type: ignore[assignment]
    assert calls == [] and result.context["mode"] == "cached"
    assert [r["cached"] for r in result.rows] == [True, True]
    assert [r["macs"] for r in result.rows] == [light["macs"], heavy["macs"]]


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "again"
    folder.mkdir()
    return folder


def test_without_ray_variants_run_one_after_another_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if not installed
    recipe = parse_recipe(
        {
            **RECIPE,
            "sweep": {"grid": {"prune.ratio": [0.5]}, "cache_dir": str(tmp_path / "cache")},
        }
    )
    notes: list[str] = []
    report, written = sweep(recipe, _folder(tmp_path), note=notes.append)
    assert len(notes) == 1 and "ray is not installed" in notes[0] and "\n" not in notes[0]
    assert report.context["mode"] == "sequential"
    assert [r["status"] for r in report.rows] == ["ok"] and report.chosen == "v01"
    assert {p.name for p in written} >= {"sweep.json", "model.pt2", "model.onnx", "report.json"}


def test_a_recipe_without_a_sweep_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert main(["sweep", str(path), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no sweep: section" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", "prune.ratio"], "--grid takes KEY=V1,V2"),
        (["--grid", "prune.ratio=0.5,3"], "variant v02 (prune.ratio=3)"),
        (["--grid", "prunee.ratio=0.5"], "'prunee.ratio' names no pass"),
        (["--samples", "3"], "--samples needs a random sweep"),
    ],
)
def test_bad_command_line_axes_fail_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    assert main(["sweep", str(path), "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
