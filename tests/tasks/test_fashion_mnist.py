"""The Fashion-MNIST task: a strict IDX reader, a one-line error without the data, a cached model.

Most tests run on tiny synthetic IDX files written here, so they need neither the Debian
package nor minutes of training; the last ones check the real dataset when it is installed.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from graphopt.analysis import analyze
from graphopt.cache import cache_root
from graphopt.capture import trace
from graphopt.data import TaskData
from graphopt.errors import GraphoptError
from graphopt.tasks import fashion_mnist as fm

TINY = fm.TrainConfig(width=8, layers=(1, 1, 1, 1), epochs=1, train_limit=64, batch_size=32)
REAL = all((fm.DEBIAN_DIR / f"{name}.gz").is_file() for name in fm._FILES.values())


def _idx_bytes(array: torch.Tensor, *, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.dim()]) + b"".join(
        struct.pack(">I", size) for size in array.shape
    )
    return header + array.to(torch.uint8).numpy().tobytes()


def _write(path: Path, payload: bytes, *, compress: bool) -> Path:
    path = path.with_name(path.name + ".gz") if compress else path
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.fixture(autouse=True)
def _fresh_split() -> Iterator[None]:
    """``load_split`` is cached per process: each test reads the folder its env names."""
    fm.load_split.cache_clear()
    yield
    fm.load_split.cache_clear()


def _synthetic_dataset(folder: Path, *, train: int = 5064, test: int = 40) -> None:
    """Images whose brightness encodes the label, so even a tiny model can learn them."""
    generator = torch.Generator().manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = torch.arange(count) % 10
        noise = torch.randint(0, 40, (count, 28, 28), generator=generator)
        images = (labels[:, None, None] * 20 + noise).clamp(max=255)
        _write(folder / f"{prefix}-images-idx3-ubyte", _idx_bytes(images), compress=True)
        _write(folder / f"{prefix}-labels-idx1-ubyte", _idx_bytes(labels), compress=False)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_reads_raw_and_gzipped_files(tmp_path: Path, compress: bool) -> None:
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    path = _write(tmp_path / "x-idx3-ubyte", _idx_bytes(images), compress=compress)
    read = fm.read_idx(path, ndim=3)
    assert read.dtype == torch.uint8 and torch.equal(read, images)
    labels = torch.tensor([0, 9, 3], dtype=torch.uint8)
    path = _write(tmp_path / "y-idx1-ubyte", _idx_bytes(labels), compress=compress)
    assert torch.equal(fm.read_idx(path, ndim=1), labels)


_GOOD = _idx_bytes(torch.zeros(2, 28, 28, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("payload", "compress", "reason"),
    [
        (b"", False, "shorter than the 4-byte magic"),
        (b"\x01\x02" + _GOOD[2:], False, "magic number starts with 0102"),
        (_idx_bytes(torch.zeros(2, 28, 28), type_code=0x0D), False, "type code 0x0d"),
        (_idx_bytes(torch.zeros(2, 784)), False, "2 dimensions, expected 3"),
        (_GOOD[:10], False, "header truncated"),
        (_GOOD[:-5], False, "the header's shape [2, 28, 28] needs"),
        (_GOOD + b"\0", False, "the header's shape [2, 28, 28] needs"),
        (gzip.compress(_GOOD)[:-12], False, "damaged gzip data"),
        (b"\x1f\x8b" + b"not gzip at all", False, "BadGzipFile"),
        (_GOOD[:-1], True, "needs"),  # a valid gzip stream of a truncated file
    ],
)
def test_a_corrupt_idx_file_is_a_one_line_error_naming_it(
    tmp_path: Path, payload: bytes, compress: bool, reason: str
) -> None:
    path = _write(tmp_path / "train-images-idx3-ubyte", payload, compress=compress)
    with pytest.raises(GraphoptError, match="not a valid IDX file") as info:
        fm.read_idx(path, ndim=3)
    message = str(info.value)
    assert reason in message and str(path) in message and "\n" not in message


def test_missing_data_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "nowhere"))
    with pytest.raises(GraphoptError) as info:
        fm.trained_model(config=TINY)
    message = str(info.value)
    assert "\n" not in message and "not found" in message and fm.ENV_VAR in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    _synthetic_dataset(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte").unlink()
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "partial"))
    with pytest.raises(GraphoptError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]") as info:
        fm.data()
    assert "\n" not in str(info.value) and "apt-get install" in str(info.value)


def test_debian_path_is_the_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    if REAL:
        assert fm.dataset_dir() == fm.DEBIAN_DIR
    else:
        with pytest.raises(GraphoptError, match=str(fm.DEBIAN_DIR)):
            fm.dataset_dir()


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ("labels", "labels; apt-get"),  # counts disagree
        ("range", "holds label 12"),
        ("size", "(27, 28) images"),
    ],
)
def test_files_that_disagree_with_each_other_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spoil: str, reason: str
) -> None:
    _synthetic_dataset(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    if spoil == "labels":
        labels.write_bytes(_idx_bytes(torch.zeros(39)))
    elif spoil == "range":
        labels.write_bytes(_idx_bytes(torch.full((40,), 12)))
    else:
        images = torch.zeros(40, 27, 28)
        _write(tmp_path / "t10k-images-idx3-ubyte", _idx_bytes(images), compress=True)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    with pytest.raises(GraphoptError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        fm.load_split()


def test_split_holds_out_validation_and_normalises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _synthetic_dataset(tmp_path)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    split = fm.load_split()
    assert split.x_train.shape == (64, 1, 28, 28) and split.x_val.shape == (5000, 1, 28, 28)
    assert split.x_test.shape == (40, 1, 28, 28) and split.x_train.dtype == torch.float32
    assert split.y_train.dtype == torch.long and int(split.y_train.max()) <= 9
    assert abs(split.x_train.mean().item()) < 1e-4
    assert split.x_train.std().item() == pytest.approx(1.0, abs=1e-3)
    again = fm.load_split.__wrapped__()  # recomputed: the split is fixed
    assert torch.equal(again.x_val, split.x_val) and again.fingerprint == split.fingerprint
    train_rows = {row.numpy().tobytes() for row in split.x_train}
    assert not train_rows & {row.numpy().tobytes() for row in split.x_val}


def test_default_model_is_a_residual_conv_net_worth_compressing() -> None:
    model = fm.build_model().eval()
    gm = trace(model, (torch.zeros(1, 1, 28, 28),))
    assert 45e6 <= analyze(gm).macs <= 60e6  # 51.8 M: ORT time dominated by convolutions
    channels = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert max(channels) == 256 and all(c % 8 == 0 for c in channels)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 12


def test_trained_model_trains_once_then_loads_the_verified_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _synthetic_dataset(tmp_path / "data")
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = fm.trained_model(config=TINY)
    assert "training the Fashion-MNIST model" in capsys.readouterr().err
    (entry,) = cache_root("tasks", "fashion_mnist").glob("*.pt")
    assert entry.is_relative_to(tmp_path / "cache") and entry.with_suffix(".json").is_file()

    def no_training(*args: object) -> None:
        raise AssertionError("retrained although the cache holds this config")

    monkeypatch.setattr(fm, "train", no_training)
    second = fm.trained_model(config=TINY)
    assert capsys.readouterr().err == "" and not second.training
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    entry.write_bytes(entry.read_bytes()[:-10])  # truncated: retrained, never loaded
    with pytest.raises(AssertionError, match="retrained"):
        fm.trained_model(config=TINY)
    assert "rejected" in capsys.readouterr().err


def test_metrics_work_on_modules_and_captured_graphs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _synthetic_dataset(tmp_path)
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    model = fm.train(fm.build_model(TINY), TINY)
    model.train()
    score = fm.accuracy(model)
    assert model.training and set(score) == {"accuracy"} and 0 <= score["accuracy"] <= 100
    gm = trace(model.eval(), fm.example_inputs())
    assert fm.accuracy(gm) == score
    assert set(fm.validation_accuracy(gm)) == {"accuracy"}


@pytest.mark.skipif(not REAL, reason="dataset-fashion-mnist is not installed")
def test_real_data_has_fashion_mnist_shapes_and_a_disjoint_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(fm.ENV_VAR, raising=False)
    task = fm.data()
    assert isinstance(task, TaskData) and task.evaluate is fm.accuracy
    assert task.validate is fm.validation_accuracy
    split = fm.load_split()
    assert len(split.x_train) == 55000 and len(split.x_val) == 5000 and len(split.x_test) == 10000
    assert torch.bincount(split.y_test).tolist() == [1000] * 10
    assert sorted(torch.bincount(split.y_val).tolist())[0] > 400  # every class validated
    xb, yb = next(iter(task.train))
    assert xb.shape == (128, 1, 28, 28) and yb.shape == (128,)
    assert sum(len(y) for _, y in task.train) == 55000
    calibration = list(task.calibration)
    assert sum(len(b[0]) for b in calibration) == 256
    assert all(b[0].shape[1:] == (1, 28, 28) for b in calibration)
    assert 0.28 < split.mean < 0.29 and 0.35 < split.std < 0.36  # Fashion-MNIST's statistics
