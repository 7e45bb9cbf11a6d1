"""The digits cache trusts an entry only when its checksum sidecar vouches for the bytes."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from graphopt.cache import cache_root
from graphopt.errors import GraphoptError
from graphopt.tasks import digits

TINY = digits.TrainConfig(width=16, layers=(1, 1, 1, 1), epochs=1, train_limit=64, batch_size=32)


def _fake_entry(folder: Path, payload: bytes, sidecar: object | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resnet_w16_0123456789abcdef.pt"
    path.write_bytes(payload)
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        path.with_suffix(".json").write_text(text)
    return path


def test_verified_weights_are_the_bytes_the_sidecar_hashes(tmp_path: Path) -> None:
    payload = b"weights"
    path = _fake_entry(tmp_path, payload, {"sha256": hashlib.sha256(payload).hexdigest()})
    assert digits._verified_weights(path) == payload


@pytest.mark.parametrize(
    ("payload", "sidecar", "reason"),
    [
        (b"\0" * 7, {"sha256": hashlib.sha256(b"weights").hexdigest()}, "does not match"),
        (b"weig", {"sha256": hashlib.sha256(b"weights").hexdigest()}, "does not match"),
        (b"weights", None, "no checksum sidecar"),
        (b"weights", {"accuracy": 99.0, "config": {}}, "has no sha256"),  # before checksums
        (b"weights", "{not json", "unreadable"),
        (b"weights", "[1, 2]", "has no sha256"),
        (b"weights", {"sha256": 12}, "has no sha256"),
    ],
)
def test_an_entry_the_sidecar_does_not_vouch_for_is_untrusted(
    tmp_path: Path, payload: bytes, sidecar: object | None, reason: str
) -> None:
    path = _fake_entry(tmp_path, payload, sidecar)
    with pytest.raises(digits._UntrustedEntry, match=reason) as info:
        digits._verified_weights(path)
    assert "\n" not in str(info.value)


def test_a_checksummed_entry_that_is_not_a_state_dict_is_untrusted(tmp_path: Path) -> None:
    payload = b"not a torch file"
    path = _fake_entry(tmp_path, payload, {"sha256": hashlib.sha256(payload).hexdigest()})
    with pytest.raises(digits._UntrustedEntry, match="does not load"):
        digits._load_verified(digits.build_model(TINY), path)


def test_the_sidecar_records_checksum_and_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = digits.trained_model(config=TINY)
    (entry,) = cache_root("tasks", "digits").glob("*.pt")
    info = json.loads(entry.with_suffix(".json").read_text())
    assert info["sha256"] == hashlib.sha256(entry.read_bytes()).hexdigest()
    assert info["weights"] == entry.name
    assert info["accuracy"] == digits.accuracy(model)["accuracy"]
    assert not list(entry.parent.glob("*.tmp"))


def _zeroed(entry: Path) -> None:
    state = torch.load(entry, weights_only=True)
    buffer = io.BytesIO()
    torch.save({k: torch.zeros_like(v) for k, v in state.items()}, buffer)
    entry.write_bytes(buffer.getvalue())


def _old_style_sidecar(entry: Path) -> None:
    info = json.loads(entry.with_suffix(".json").read_text())
    del info["sha256"]
    entry.with_suffix(".json").write_text(json.dumps(info))


def _no_sidecar(entry: Path) -> None:
    entry.with_suffix(".json").unlink()


def _nan_weights_with_a_matching_sidecar(entry: Path) -> None:
    state = torch.load(entry, weights_only=True)
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
             for k, v in state.items()}  # fmt: skip
    buffer = io.BytesIO()
    torch.save(state, buffer)
    entry.write_bytes(buffer.getvalue())
    info = json.loads(entry.with_suffix(".json").read_text())
    info["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    entry.with_suffix(".json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_zeroed, "sha256 does not match"),
        (_old_style_sidecar, "did not checksum"),
        (_no_sidecar, "no checksum sidecar"),
        (_nan_weights_with_a_matching_sidecar, "non-finite"),
    ],
)
def test_a_spoiled_entry_is_retrained_from_scratch_never_loaded(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    spoil: object,
    reason: str,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = digits.trained_model(config=TINY)
    (entry,) = cache_root("tasks", "digits").glob("*.pt")
    capsys.readouterr()
    spoil(entry)  # type: ignore[operator]
    again = digits.trained_model(config=TINY)
    err = capsys.readouterr().err
    (warning,) = [line for line in err.splitlines() if "rejected" in line]
    assert reason in warning and "retraining" in warning and str(entry) in warning
    assert "training the digits model" in err
    s1, s2 = first.state_dict(), again.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # the seeded training, not the spoiled one
    assert digits._verified_weights(entry) == entry.read_bytes()  # the entry is healthy again
    digits.trained_model(config=TINY)
    assert capsys.readouterr().err == ""  # and now trusted


def test_a_diverged_training_is_refused_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def diverge(model: torch.nn.Module, _config: digits.TrainConfig) -> torch.nn.Module:
        with torch.no_grad():
            next(model.parameters()).fill_(float("inf"))
        return model.eval()

    monkeypatch.setattr(digits, "train", diverge)
    with pytest.raises(GraphoptError, match="diverged"):
        digits.trained_model(config=TINY)
    assert not list(cache_root("tasks", "digits").glob("*.pt"))
