import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from graphopt.cli import main


def tiny_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
    return model, (torch.randn(1, 3, 16, 16),)


def mean_output(model: nn.Module) -> dict[str, float]:
    """A stand-in task metric: deterministic for a fixed model."""
    x = torch.linspace(-1, 1, 3 * 16 * 16 * 2).reshape(2, 3, 16, 16)
    with torch.no_grad():
        return {"mean_logit": float(model(x).mean())}


def broken_metric(model: nn.Module) -> float:
    raise RuntimeError("dataset missing")


def write_recipe(tmp_path: Path, **overrides: object) -> Path:
    recipe = {
        "model": "tests.test_cli:tiny_cnn",
        "passes": ["fold_batchnorm"],
        "backends": ["onnxruntime"],
        "benchmark": {"warmup": 1, "runs": 3},
        "output": str(tmp_path / "out"),
        **overrides,
    }
    path = tmp_path / "recipe.json.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_run_writes_report_and_models(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    recipe = write_recipe(tmp_path, evaluate="tests.test_cli:mean_output")
    assert main(["run", str(recipe)]) == 0
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "report.png",
        "model.pt2",
        "model.onnx",
        ".graphopt-output.json",  # the manifest: what graphopt may replace on the next run
        "graphopt.log",  # what torch, ORT and TVM printed, kept off the user's screen
    }
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["capture", "fold_batchnorm"]
    assert report["stages"][1]["stats"]["folded"] == 1
    gem = {row["metric"]: row for row in report["gem"]}
    assert gem["params"]["original"] > gem["params"]["compressed"]
    assert gem["params"]["compression_rate"] > 1.0
    assert gem["macs"]["compression_rate"] == pytest.approx(1.0)
    (latency,) = report["latency"]
    assert latency["backend"] == "onnxruntime" and latency["max_rel_diff"] < 1e-4
    assert latency["speedup"] == pytest.approx(latency["original_ms"] / latency["compressed_ms"])
    metric = report["task_metric"]
    assert metric["original"]["mean_logit"] == pytest.approx(
        metric["compressed"]["mean_logit"], abs=1e-5
    )
    assert "a/a*" in (out / "report.md").read_text()
    loaded = torch.export.load(out / "model.pt2").module()
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(loaded(x), tiny_cnn()[0](x), atol=1e-5)
    assert "params" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"passes": ["fold_bn"]}, "unknown pass 'fold_bn'"),
        ({"passes": [{"fold_batchnorm": {"ratio": 2}}]}, "no option 'ratio'"),
        ({"model": "tests.test_recipe:raising_factory"}, "raised ValueError"),
        ({"model": "resnet18", "input_shape": "1,3,x"}, "input shape"),
        ({"evaluate": "tests.test_cli:broken_metric"}, "dataset missing"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, overrides: dict, message: str
) -> None:
    recipe = write_recipe(tmp_path, **overrides)
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("graphopt: error:") and message in err
    if "broken_metric" not in str(overrides):
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == [recipe.name]


def test_missing_recipe_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_inspect_and_passes(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "tests.test_cli:tiny_cnn", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "MACs" in out
    assert main(["passes"]) == 0
    assert "fold_batchnorm" in capsys.readouterr().out


def test_bench_compares_backends(capsys: pytest.CaptureFixture) -> None:
    argv = [
        "bench",
        "tests.test_cli:tiny_cnn",
        "--backend",
        "onnxruntime",
        "--runs",
        "3",
        "--warmup",
        "1",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "onnxruntime" in out


def test_console_script_exit_code() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "graphopt.cli", "inspect", "no_such_model"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[0]]
        and "unknown zoo model" in proc.stderr
    )
