"""Handwritten digits (scikit-learn's bundled copy of UCI optdigits) with a small ResNet.

Why this task: it needs no download, trains in one to three minutes on two CPU cores, yet the
model is a real conv net (a ResNet-18 layout at width 32, ~139 M MACs per 32×32 image) whose
ONNX Runtime latency is dominated by convolutions rather than per-call overhead, and whose
accuracy visibly drops when it is compressed too hard. So compression, recovery and their
report can be checked end to end on real numbers.

Data: the 1797 8×8 images (values 0–16) are scaled to [0, 1], upscaled to 32×32 (bilinear),
and normalised with the training split's mean and standard deviation. The split is a fixed,
stratified 80/20 one (1437 train, 360 test images, seed 0). Training uses random shifts of up
to ``max_shift`` pixels, SGD with Nesterov momentum and a one-cycle schedule (short warm-up,
then cosine decay).

The trained state dict is cached under ``cache_root("tasks", "digits")`` keyed by a hash of
the training config and of the training code's source, so a changed recipe retrains. Beside
each weights file a JSON sidecar records the sha256 of its bytes and the test accuracy
measured at training time; an entry whose sidecar is missing or does not match is retrained,
never trusted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.cache import cache_root
from graphopt.data import TaskData, batches, calibration_batches
from graphopt.metrics import inference_flags
from graphopt.tasks._cache import (
    UntrustedEntry,
    all_finite,
    code_key,
    first_line,
    load_or_train,
    load_verified,
    verified_weights,
)
from graphopt.zoo import resnet
from graphopt.zoo.seeding import seeded

__all__ = [
    "DigitsSplit",
    "TrainConfig",
    "accuracy",
    "build_model",
    "data",
    "example_inputs",
    "load_split",
    "train",
    "trained_model",
    "validation_accuracy",
]

IMAGE_SIZE = 32
NUM_CLASSES = 10
_EVAL_BATCH = 120  # 360 test images in 3 equal batches: deterministic, never a batch of 1
VALIDATION = 180  # training images data() holds out of fine-tuning for validation_accuracy


@dataclass(frozen=True)
class DigitsSplit:
    """The normalised 1×32×32 images and labels of the fixed split, and which rows went where."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    train_index: Tensor
    test_index: Tensor
    mean: float
    std: float


@dataclass(frozen=True)
class TrainConfig:
    """How the digits model is built and trained; every field is part of the cache key."""

    width: int = 32
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    max_shift: int = 3
    seed: int = 0
    train_limit: int | None = None  # train on the first N training images (tests only)


@cache
def load_split(test_size: float = 0.2, seed: int = 0) -> DigitsSplit:
    """The fixed stratified split (the same tensors on every call: don't modify them)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear")
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_index, test_index = train_test_split(
        torch.arange(len(labels)).numpy(),
        test_size=test_size,
        stratify=labels.numpy(),
        random_state=seed,
    )
    train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
    mean = images[train_index].mean().item()
    std = images[train_index].std().item()
    images = (images - mean) / std
    return DigitsSplit(
        x_train=images[train_index],
        y_train=labels[train_index],
        x_test=images[test_index],
        y_test=labels[test_index],
        train_index=train_index,
        test_index=test_index,
        mean=mean,
        std=std,
    )


def build_model(config: TrainConfig | None = None) -> resnet.ResNet:
    """The untrained architecture: a ResNet with a 3×3 stem, one input channel, 10 classes."""
    config = config or TrainConfig()
    with seeded(config.seed):
        return resnet.ResNet(
            resnet.BasicBlock,
            config.layers,
            num_classes=NUM_CLASSES,
            in_channels=1,
            width=config.width,
            stem="cifar",
        )


def example_inputs() -> tuple[Tensor, ...]:
    """One normalised test image, ``(1, 1, 32, 32)``: the model's example input."""
    return (load_split().x_test[:1].clone(),)


def trained_model(*, config: TrainConfig | None = None) -> nn.Module:
    """The trained model in eval mode: loaded from the cache, or trained (and cached) first.

    A cache entry is used only when its sidecar vouches for it (``graphopt.tasks._cache``);
    anything else (no sidecar, a checksum mismatch, weights that do not load or are not
    finite) is reported on one line and retrained, never loaded as it is.
    """
    config = config or TrainConfig()
    return load_or_train(
        _cache_path(config),
        task="digits",
        build=lambda: build_model(config),
        fit=lambda model: train(model, config),  # looked up at call time: tests patch it
        score=accuracy,
        config=config,
        announce=f"{config.epochs} epochs, 1-3 min on 2 cores",
        diverged_hint="lower lr in its TrainConfig",
    )


# The cache's checks, under the names this module's tests and older callers use.
_UntrustedEntry = UntrustedEntry
_verified_weights = verified_weights
_load_verified = load_verified
_all_finite = all_finite
_first_line = first_line


def train(model: nn.Module, config: TrainConfig) -> nn.Module:
    """Train ``model`` in place on the training split; return it in eval mode."""
    split = load_split()
    x, y = split.x_train, split.y_train
    if config.train_limit is not None:
        x, y = x[: config.train_limit], y[: config.train_limit]
    loader = batches(x, y, config.batch_size, shuffle=True, seed=config.seed)
    total = config.epochs * len(loader)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=total, pct_start=0.15
    )
    background = -split.mean / split.std
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    with seeded(config.seed):
        for _ in range(config.epochs):
            for xb, yb in loader:
                xb = _random_shift(xb, config.max_shift, background, generator)
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    return model.eval()


def accuracy(model: nn.Module) -> dict[str, float]:
    """Top-1 accuracy in % on the 360 test images.

    Works on an ``nn.Module`` (in eval mode for the call, its flags restored after) and on the
    GraphModule of ``torch.export`` (whose graph is already in inference form).
    """
    split = load_split()
    return {"accuracy": _top1(model, split.x_test, split.y_test)}


def _top1(model: nn.Module, x: Tensor, y: Tensor) -> float:
    restore = inference_flags(model)
    correct = 0
    try:
        with torch.no_grad():
            for start in range(0, len(x), _EVAL_BATCH):
                out = model(x[start : start + _EVAL_BATCH])
                logits = out if isinstance(out, Tensor) else torch.utils._pytree.tree_leaves(out)[0]
                correct += (logits.argmax(-1) == y[start : start + _EVAL_BATCH]).sum()
    finally:
        restore()
    return 100.0 * int(correct) / len(y)


def data(batch_size: int = 64) -> TaskData:
    """For compression: shuffled training batches without the last ``VALIDATION`` training
    images, which ``validation_accuracy`` scores (recovery's checkpoint choice, a search's
    sensitivity); 256 training images as calibration data; ``accuracy`` on the test split for
    the report. The test images are never used to choose anything."""
    split = load_split()
    fit = slice(0, len(split.x_train) - VALIDATION)
    return TaskData(
        train=batches(split.x_train[fit], split.y_train[fit], batch_size, shuffle=True, seed=0),
        calibration=calibration_batches(split.x_train[:256], 32),
        evaluate=accuracy,
        validate=validation_accuracy,
    )


def validation_accuracy(model: nn.Module) -> dict[str, float]:
    """Top-1 accuracy in % on the last ``VALIDATION`` training images (held out by ``data``).

    The pretrained model saw them during its own training, so this is optimistic as an
    absolute number; it serves to compare compressed candidates, not to report.
    """
    split = load_split()
    held_out = slice(len(split.x_train) - VALIDATION, None)
    return {"accuracy": _top1(model, split.x_train[held_out], split.y_train[held_out])}


def _random_shift(x: Tensor, max_shift: int, fill: float, generator: torch.Generator) -> Tensor:
    """Shift each image by up to ``max_shift`` pixels along each axis, filling with ``fill``."""
    if max_shift == 0:
        return x
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)
    offsets = torch.randint(0, 2 * s + 1, (len(x), 2), generator=generator).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets)])


def _cache_path(config: TrainConfig) -> Path:
    """``<cache>/resnet_w<width>_<key>.pt``; the key hashes the config and the training code.

    The code is the source of what determines the weights (the split, the architecture, the
    training loop and the ResNet module), so editing it retrains, while editing how the
    cache is read or how accuracy is reported does not.
    """
    key = code_key(asdict(config), _TRAINING_CODE)
    return cache_root("tasks", "digits") / f"resnet_w{config.width}_{key}.pt"


# Bound at import, so the key does not follow a monkeypatched ``train`` (tests do that).
_TRAINING_CODE = (load_split.__wrapped__, build_model, train, _random_shift, resnet)
