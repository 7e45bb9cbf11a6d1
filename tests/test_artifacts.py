"""Public save/load/export: round trips, the CLI's export, and refusing pickled archives."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphopt
from graphopt.cli import main
from graphopt.errors import GraphoptError
from graphopt.passes import FoldBatchNorm


@pytest.fixture(scope="module")
def compressed() -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    model, inputs = graphopt.zoo.get_model("resnet18", input_shape=(1, 3, 32, 32))
    run = graphopt.compress(model, inputs, [FoldBatchNorm()])
    return run.compressed, run.example_inputs


def test_save_and_load_round_trip(tmp_path: Path, compressed: tuple) -> None:
    gm, inputs = compressed
    path = graphopt.save(gm, inputs, tmp_path / "m.pt2")
    loaded = graphopt.load(path)
    x = torch.randn(3, 3, 32, 32)  # another batch size: the batch stayed dynamic
    assert isinstance(loaded, torch.fx.GraphModule)
    torch.testing.assert_close(loaded(x), gm(x), rtol=1e-5, atol=1e-5)


def test_export_onnx_runs_in_onnxruntime(tmp_path: Path, compressed: tuple) -> None:
    gm, inputs = compressed
    path = graphopt.export_onnx(gm, inputs, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 32, 32)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(got, gm(x).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_cli_export_writes_onnx_from_a_saved_model(tmp_path: Path, compressed: tuple) -> None:
    gm, inputs = compressed
    graphopt.save(gm, inputs, tmp_path / "m.pt2")
    assert main(["export", str(tmp_path / "m.pt2"), "--onnx", str(tmp_path / "m.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 32, 32]


def test_load_refuses_an_archive_that_would_unpickle(tmp_path: Path, compressed: tuple) -> None:
    """Rewrite one weight payload as a pickle of a non-tensor object: load must refuse it."""
    gm, inputs = compressed
    good = graphopt.save(gm, inputs, tmp_path / "m.pt2")
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if "/data/weights/" in item.filename and item.filename.endswith("weight_0"):
                buffer = io.BytesIO()
                torch.save({"object": object.__new__(_Evil)}, buffer)
                data = buffer.getvalue()
            if item.filename.endswith("weights_config.json") or "weights_config" in item.filename:
                data = data.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
            dst.writestr(item, data)
    with pytest.raises(GraphoptError, match="pickled Python objects"):
        graphopt.load(evil)


class _Evil:
    def __reduce__(self) -> tuple:
        return (print, ("this would run on load",))


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_load_names_a_file_that_is_not_an_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt2"
    path.write_bytes(content)
    with pytest.raises(GraphoptError, match=r"not a torch\.export archive"):
        graphopt.load(path)


def test_save_wants_a_pt2_suffix(tmp_path: Path, compressed: tuple) -> None:
    gm, inputs = compressed
    with pytest.raises(GraphoptError, match=r"\.pt2"):
        graphopt.save(gm, inputs, tmp_path / "m.onnx")
