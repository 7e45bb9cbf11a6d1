"""Fashion-MNIST (Xiao et al. 2017) with a small ResNet: a real task at real scale, offline.

Why this task beside digits: 60 000 training and 10 000 test images of ten kinds of clothing,
hard enough that a small CNN stays near 92% and every compression step shows up in the test
accuracy, yet 28×28 grey images that a ResNet-10 layout at width 32 (graphopt.zoo's ResNet
with one BasicBlock per stage, 3×3 stem, 51.8 M MACs per image) learns in a few minutes on
two CPU cores. Its BatchNorm layers, residual adds and strided downsamples are what pruning,
folding and int8 meet on real networks.

Why this size and not ResNet-18 at width 16 (28.6 M MACs, the first version, 92.05% test
accuracy after 3 epochs): at batch 1 that network runs in 0.6 ms on ONNX Runtime, so once
pruned to a quarter of its MACs and quantized, per-operator overhead dominated and the full
pipeline was only 2.3× faster. On latency alone (untrained weights, the same passes) ResNet-18
at width 16 gave 2.7× and ResNet-10 at width 32 6.0×, and the latter trains in about the same
time: 2 epochs of 168 s against 3 of 98 s (two threads, measured in a quiet moment).
``benchmarks/RESULTS.md`` ("Real tasks") has the numbers.

Data: the IDX files of the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/``, gzip-compressed as it ships them), or any folder named
by ``$GRAPHOPT_FASHION_MNIST_DIR`` holding the four files raw or gzipped; nothing is
downloaded. Pixels are scaled to [0, 1] and normalised with the mean and standard deviation of
the training images. A fixed 5 000-image validation split (seed 0) is held out of the training
set, both of the pretraining and of compression's fine-tuning, so ``validate`` measures
generalisation without touching the test set, which only ``accuracy`` reads.

Training: AdamW with a one-cycle schedule, 2 epochs, random horizontal flips (clothes are
close to mirror-symmetric). Measured: 91.98% test and 92.08% validation accuracy. The state
dict is cached under ``cache_root("tasks", "fashion_mnist")`` with the checksum sidecar of
``graphopt.tasks._cache``, keyed by the training config, the training code and a fingerprint
of the training data.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.cache import cache_root
from graphopt.data import TaskData, batches, calibration_batches
from graphopt.errors import GraphoptError
from graphopt.metrics import inference_flags
from graphopt.tasks._cache import code_key, first_line, load_or_train
from graphopt.zoo import resnet
from graphopt.zoo.seeding import seeded

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "ENV_VAR",
    "FashionSplit",
    "TrainConfig",
    "accuracy",
    "build_model",
    "data",
    "dataset_dir",
    "example_inputs",
    "load_split",
    "read_idx",
    "train",
    "trained_model",
    "validation_accuracy",
]

ENV_VAR = "GRAPHOPT_FASHION_MNIST_DIR"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")  # fmt: skip
IMAGE_SIZE = 28
VALIDATION = 5000  # training images held out of all training, scored by validation_accuracy
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_EVAL_BATCH = 500  # 10 000 and 5 000 images in equal batches: fast, never a batch of 1
_IDX_UINT8 = 0x08  # the IDX type code of unsigned bytes, the only one Fashion-MNIST uses
_INSTALL = (
    f"apt-get install -y dataset-fashion-mnist, or set {ENV_VAR} to a folder with the IDX files"
)


@dataclass(frozen=True)
class FashionSplit:
    """Normalised 1×28×28 images and labels: training (without validation), validation, test.

    ``fingerprint`` hashes the raw training data, so a model trained on other files (another
    ``$GRAPHOPT_FASHION_MNIST_DIR``) is cached under another key.
    """

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    mean: float
    std: float
    fingerprint: str


@dataclass(frozen=True)
class TrainConfig:
    """How the model is built and trained; every field is part of the cache key."""

    width: int = 32
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    epochs: int = 2
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    flip: bool = True
    seed: int = 0
    train_limit: int | None = None  # train on the first N training images (tests only)


def dataset_dir() -> Path:
    """The folder holding the four IDX files: ``$GRAPHOPT_FASHION_MNIST_DIR``, else Debian's.

    Raises a one-line ``GraphoptError`` saying how to install the data when a file is missing.
    """
    override = os.environ.get(ENV_VAR)
    folder = Path(override) if override else DEBIAN_DIR
    where = f"{folder} (from ${ENV_VAR})" if override else str(folder)
    missing = [name for name in _FILES.values() if _find_idx(folder, name) is None]
    if missing:
        what = "not found" if not folder.is_dir() else f"lacks {', '.join(missing)}[.gz]"
        raise GraphoptError(f"Fashion-MNIST data {where} {what}: {_INSTALL}")
    return folder


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, *, ndim: int) -> Tensor:
    """The uint8 tensor of an IDX file (raw or gzip-compressed, told apart by content).

    IDX (LeCun's MNIST format): two zero bytes, a type code (0x08: unsigned byte), the number
    of dimensions, each dimension as a big-endian uint32, then the values in C order. Every
    part is checked, since a truncated download or a wrong file otherwise becomes a
    reshape error or silently wrong images; a bad file is a one-line ``GraphoptError``
    naming it and what is wrong.
    """

    def corrupt(reason: str) -> GraphoptError:
        return GraphoptError(
            f"{path} is not a valid IDX file ({reason}); reinstall it (apt-get install "
            f"--reinstall dataset-fashion-mnist) or fix the files in ${ENV_VAR}"
        )

    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except OSError as exc:  # unreadable, or gzip.BadGzipFile
        raise corrupt(first_line(exc)) from exc
    except (EOFError, zlib.error) as exc:  # a truncated or damaged gzip stream
        raise corrupt(f"damaged gzip data: {first_line(exc)}") from exc
    if len(raw) < 4:
        raise corrupt(f"{len(raw)} bytes, shorter than the 4-byte magic number")
    if raw[:2] != b"\0\0":
        raise corrupt(f"magic number starts with {raw[:2].hex()}, not 0000")
    if raw[2] != _IDX_UINT8:
        raise corrupt(f"type code 0x{raw[2]:02x}, expected 0x08 (unsigned bytes)")
    if raw[3] != ndim:
        raise corrupt(f"{raw[3]} dimensions, expected {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt(f"header truncated: {len(raw)} bytes, {header} needed")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise corrupt(f"{len(raw)} bytes, the header's shape {list(shape)} needs {expected}")
    values = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)
    return torch.from_numpy(values.copy())


def _idx_file(folder: Path, name: str) -> Path:
    """``folder/name`` or ``folder/name.gz``; a one-line error if neither is there (any more)."""
    found = _find_idx(folder, name)
    if found is None:
        raise GraphoptError(f"Fashion-MNIST data {folder} lacks {name}[.gz]: {_INSTALL}")
    return found


def _read_pair(folder: Path, images: str, labels: str) -> tuple[Tensor, Tensor]:
    """Images (N, 28, 28) and labels (N,) read and checked against each other."""
    image_path, label_path = _idx_file(folder, images), _idx_file(folder, labels)
    x = read_idx(image_path, ndim=3)
    y = read_idx(label_path, ndim=1)
    if tuple(x.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise GraphoptError(
            f"{image_path} holds {tuple(x.shape[1:])} images, Fashion-MNIST's are 28×28; {_INSTALL}"
        )
    if len(x) != len(y):
        raise GraphoptError(
            f"{image_path} holds {len(x)} images but {label_path} {len(y)} labels; {_INSTALL}"
        )
    if len(y) and int(y.max()) >= len(CLASSES):
        raise GraphoptError(
            f"{label_path} holds label {int(y.max())}, Fashion-MNIST's are 0-9; {_INSTALL}"
        )
    return x, y.long()


@cache
def load_split(seed: int = 0) -> FashionSplit:
    """The normalised split (the same tensors on every call: don't modify them)."""
    folder = dataset_dir()
    x_all, y_all = _read_pair(folder, _FILES["train_images"], _FILES["train_labels"])
    x_test, y_test = _read_pair(folder, _FILES["test_images"], _FILES["test_labels"])
    if len(x_all) <= VALIDATION or not len(x_test):
        raise GraphoptError(
            f"Fashion-MNIST in {folder} has {len(x_all)} training and {len(x_test)} test "
            f"images; at least {VALIDATION + 1} and 1 are needed: {_INSTALL}"
        )
    digest = hashlib.sha256(x_all.numpy().tobytes())
    digest.update(y_all.numpy().tobytes())
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(seed))
    val_index, fit_index = order[:VALIDATION], order[VALIDATION:]
    scaled = x_all.float().div_(255.0)
    mean = scaled[fit_index].mean().item()
    std = scaled[fit_index].std().item()

    def normalise(x: Tensor) -> Tensor:
        return ((x.float() / 255.0 - mean) / std).unsqueeze(1)

    return FashionSplit(
        x_train=normalise(x_all[fit_index]),
        y_train=y_all[fit_index],
        x_val=normalise(x_all[val_index]),
        y_val=y_all[val_index],
        x_test=normalise(x_test),
        y_test=y_test,
        mean=mean,
        std=std,
        fingerprint=digest.hexdigest()[:16],
    )


def build_model(config: TrainConfig | None = None) -> resnet.ResNet:
    """The untrained architecture: a ResNet with a 3×3 stem, one input channel, 10 classes."""
    config = config or TrainConfig()
    with seeded(config.seed):
        return resnet.ResNet(
            resnet.BasicBlock,
            config.layers,
            num_classes=len(CLASSES),
            in_channels=1,
            width=config.width,
            stem="cifar",
        )


def example_inputs() -> tuple[Tensor, ...]:
    """One normalised test image, ``(1, 1, 28, 28)``: the model's example input."""
    return (load_split().x_test[:1].clone(),)


def trained_model(*, config: TrainConfig | None = None) -> nn.Module:
    """The trained model in eval mode: loaded from the verified cache, or trained first.

    Training takes about 6 minutes on two idle CPU cores (2 epochs over 55 000 images) and
    happens once per machine and config; the sidecar records test and validation accuracy.
    """
    config = config or TrainConfig()
    split = load_split()  # first, so a missing dataset fails before anything is announced
    return load_or_train(
        _cache_path(config, split.fingerprint),
        task="Fashion-MNIST",
        build=lambda: build_model(config),
        fit=lambda model: train(model, config),  # looked up at call time: tests patch it
        score=lambda model: {**accuracy(model), **_prefixed(validation_accuracy(model))},
        config=config,
        announce=f"{config.epochs} epochs, about 3 min each on 2 idle cores",
        diverged_hint="lower lr in its TrainConfig",
    )


def _prefixed(metrics: dict[str, float]) -> dict[str, float]:
    return {f"validation_{name}": value for name, value in metrics.items()}


def train(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Train ``model`` in place on the training split (validation held out); eval mode after."""
    split = load_split()
    x, y = split.x_train, split.y_train
    if config.train_limit is not None:
        x, y = x[: config.train_limit], y[: config.train_limit]
    loader = batches(x, y, config.batch_size, shuffle=True, seed=config.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(loader), pct_start=0.2
    )
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    with seeded(config.seed):
        for _ in range(config.epochs):
            for xb, yb in loader:
                if config.flip:
                    xb = _random_flip(xb, generator)
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def _random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def accuracy(model: nn.Module) -> dict[str, float]:
    """Top-1 accuracy in % on the 10 000 test images (eval mode for the call, flags restored).

    Works on an ``nn.Module`` and on the GraphModule of ``torch.export``.
    """
    split = load_split()
    return {"accuracy": _top1(model, split.x_test, split.y_test)}


def validation_accuracy(model: nn.Module) -> dict[str, float]:
    """Top-1 accuracy in % on the 5 000 validation images no training has seen.

    What passes that choose (recovery's checkpoint, a search's sensitivity) should read, so
    the test accuracy the report shows is never optimised.
    """
    split = load_split()
    return {"accuracy": _top1(model, split.x_val, split.y_val)}


def _top1(model: nn.Module, x: Tensor, y: Tensor) -> float:
    restore = inference_flags(model)
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(x), _EVAL_BATCH):
                out = model(x[start : start + _EVAL_BATCH])
                logits = out if isinstance(out, Tensor) else torch.utils._pytree.tree_leaves(out)[0]
                correct += int((logits.argmax(-1) == y[start : start + _EVAL_BATCH]).sum())
    finally:
        restore()
    return 100.0 * correct / len(y)


def data(batch_size: int = 128) -> TaskData:
    """For compression: shuffled batches of the 55 000 training images, the first 256 of them
    as calibration data (batches of 32), ``accuracy`` on the test set for the report and
    ``validation_accuracy`` on the held-out 5 000 for passes that choose."""
    split = load_split()
    return TaskData(
        train=batches(split.x_train, split.y_train, batch_size, shuffle=True, seed=0),
        calibration=calibration_batches(split.x_train[:256], 32),
        evaluate=accuracy,
        validate=validation_accuracy,
    )


def _cache_path(config: TrainConfig, fingerprint: str) -> Path:
    """``<cache>/resnet_w<width>_<key>.pt``; the key hashes config, training code and data."""
    key = code_key({**asdict(config), "data": fingerprint}, _TRAINING_CODE)
    return cache_root("tasks", "fashion_mnist") / f"resnet_w{config.width}_{key}.pt"


# Bound at import, so the key does not follow a monkeypatched ``train`` (tests do that).
_TRAINING_CODE = (load_split.__wrapped__, build_model, train, _random_flip, resnet)
