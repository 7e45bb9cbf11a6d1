"""The digits task: a fixed split, a deterministic metric, a cached trained model."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from graphopt.analysis import analyze
from graphopt.cache import cache_root
from graphopt.capture import trace
from graphopt.data import TaskData
from graphopt.tasks import digits

TINY = digits.TrainConfig(width=16, layers=(1, 1, 1, 1), epochs=1, train_limit=64, batch_size=32)


def test_split_is_fixed_stratified_disjoint_and_normalised() -> None:
    split = digits.load_split()
    again = digits.load_split.__wrapped__()  # recomputed, not the cached object
    assert torch.equal(split.train_index, again.train_index)
    assert torch.equal(split.x_test, again.x_test)
    train, test = set(split.train_index.tolist()), set(split.test_index.tolist())
    assert len(train) == 1437 and len(test) == 360
    assert not train & test and len(train | test) == 1797
    counts = Counter(split.y_test.tolist())
    assert sorted(counts) == list(range(10)) and all(35 <= c <= 37 for c in counts.values())
    assert split.x_train.shape == (1437, 1, 32, 32) and split.x_test.shape == (360, 1, 32, 32)
    assert abs(split.x_train.mean().item()) < 1e-4
    assert split.x_train.std().item() == pytest.approx(1.0, abs=1e-4)


def test_default_model_is_a_real_conv_net() -> None:
    model = digits.build_model().eval()
    gm = trace(model, digits.example_inputs())
    assert 50e6 <= analyze(gm).macs <= 150e6
    channels = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c % 16 == 0 for c in channels) and max(channels) == 256


def test_accuracy_is_deterministic_on_modules_and_graph_modules() -> None:
    model = digits.build_model(TINY)
    digits.train(model, TINY)
    model.train()  # the metric must evaluate in eval mode and restore the flags
    score = digits.accuracy(model)
    assert model.training and all(m.training for m in model.modules())
    assert score == digits.accuracy(model.eval())
    assert set(score) == {"accuracy"} and 0 <= score["accuracy"] <= 100
    gm = trace(model, digits.example_inputs())
    assert digits.accuracy(gm) == score


def test_data_offers_train_calibration_evaluate_and_a_non_test_validation() -> None:
    task = digits.data()
    assert isinstance(task, TaskData) and task.evaluate is digits.accuracy
    assert task.validate is digits.validation_accuracy
    first = [y for _, y in task.train]
    second = [y for _, y in task.train]
    fit = 1437 - digits.VALIDATION
    assert sum(len(y) for y in first) == fit and len(first) == len(task.train) == 20
    split = digits.load_split()
    held_out = {tuple(x.flatten().tolist()) for x in split.x_train[fit:][:20]}
    trained = {tuple(x.flatten().tolist()) for xb, _ in task.train for x in xb}
    assert not held_out & trained  # validation images are never fine-tuned on
    assert not torch.equal(torch.cat(first), torch.cat(second))  # reshuffled each epoch
    calibration = list(task.calibration)
    assert all(len(b) == 1 and b[0].shape[1:] == (1, 32, 32) for b in calibration)
    assert sum(len(b[0]) for b in calibration) == 256
    assert calibration[0][0].equal(next(iter(task.calibration))[0])  # in order, every time


def test_trained_model_trains_once_then_loads_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = digits.trained_model(config=TINY)
    assert "training the digits model" in capsys.readouterr().err
    folder = cache_root("tasks", "digits")
    assert folder.is_relative_to(tmp_path)
    assert len(list(folder.glob("*.pt"))) == 1 and len(list(folder.glob("*.json"))) == 1

    def no_training(*args: object) -> None:
        raise AssertionError("retrained although the cache holds this config")

    monkeypatch.setattr(digits, "train", no_training)
    second = digits.trained_model(config=TINY)
    assert not first.training and not second.training
    assert capsys.readouterr().err == ""
    s1, s2 = first.state_dict(), second.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    with pytest.raises(AssertionError, match="retrained"):  # another recipe, another key
        digits.trained_model(config=digits.TrainConfig(**{**TINY.__dict__, "lr": 0.01}))


def test_unreadable_cache_entry_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    digits.trained_model(config=TINY)
    (entry,) = cache_root("tasks", "digits").glob("*.pt")
    entry.write_bytes(b"truncated")
    model = digits.trained_model(config=TINY)
    assert "rejected" in capsys.readouterr().err
    assert isinstance(model, torch.nn.Module) and entry.stat().st_size > 1000


def test_cache_root_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root("tasks", "digits") == tmp_path / "graphopt" / "tasks" / "digits"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "graphopt"
