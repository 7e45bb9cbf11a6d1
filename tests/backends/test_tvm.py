"""TVM backend: numerics against eager (untuned), the tuning database cache, and errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("tvm")

from graphopt.backends.base import CompiledModel, flat_torch_outputs, to_numpy_inputs
from graphopt.backends.tvm import TVMBackend, default_cache_root
from graphopt.capture import trace
from graphopt.errors import BackendError, BackendUnavailableError, RecipeError
from tests.helpers import randomize_batchnorm

REL_TOL = 1e-4


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: LayerNorm → SDPA → residual → LayerNorm → GELU MLP."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k, v = (y.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for y in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        return self.a(x), (self.b(x), x.sum(dim=1))


@torch.library.custom_op("graphopt_test_tvm::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _mystery_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class UsesMystery(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(x) + 1


def _seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return randomize_batchnorm(model, seed).eval()


def _rel_diff(reference: list[np.ndarray], actual: list[np.ndarray]) -> float:
    assert len(reference) == len(actual)
    worst = 0.0
    for ref, got in zip(reference, actual, strict=True):
        assert ref.shape == got.shape and ref.dtype == got.dtype
        scale = max(float(np.abs(ref).max()), 1e-12)
        worst = max(worst, float(np.abs(ref.astype(np.float64) - got).max()) / scale)
    return worst


def _check_matches_eager(model: nn.Module, compiled: CompiledModel, inputs: tuple) -> None:
    with torch.no_grad():
        reference = flat_torch_outputs(model(*inputs))
    assert _rel_diff(reference, compiled.run(to_numpy_inputs(inputs))) <= REL_TOL


def _record_count(database_dir: Path) -> int:
    path = database_dir / "database_tuning_record.json"
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_cnn_untuned_matches_eager() -> None:
    model = _seeded(SmallCNN())
    inputs = (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    compiled = TVMBackend().compile(trace(model, inputs), inputs)

    assert isinstance(compiled, CompiledModel)
    assert compiled.backend == "tvm"
    assert compiled.info["tuned"] is False and compiled.info["trials"] == 0
    assert "untuned" in compiled.info["note"]
    assert json.loads(compiled.info["target"])["kind"] == "llvm"
    _check_matches_eager(model, compiled, inputs)


def test_attention_block_matches_eager() -> None:
    model = _seeded(AttentionBlock())
    inputs = (torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(2)),)
    compiled = TVMBackend().compile(trace(model, inputs), inputs)
    _check_matches_eager(model, compiled, inputs)


def test_nested_tuple_outputs_are_flattened_in_order() -> None:
    model = _seeded(TwoHeads())
    inputs = (torch.randn(4, 6, generator=torch.Generator().manual_seed(3)),)
    compiled = TVMBackend().compile(model, inputs)

    outputs = compiled.run(to_numpy_inputs(inputs))
    assert [o.shape for o in outputs] == [(4, 3), (4, 2), (4,)]
    _check_matches_eager(model, compiled, inputs)


def test_threads_and_old_style_target_string() -> None:
    model = _seeded(TinyConv())
    inputs = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4)),)
    compiled = TVMBackend(threads=1, target="llvm -mcpu=x86-64").compile(model, inputs)

    assert compiled.info["threads"] == 1
    target = json.loads(compiled.info["target"])
    assert target["mcpu"] == "x86-64" and target["num-cores"] == 1
    _check_matches_eager(model, compiled, inputs)


@pytest.mark.slow
def test_tuning_writes_database_and_second_compile_reuses_it(tmp_path: Path) -> None:
    inputs = (torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)),)
    first_model = _seeded(TinyConv(), seed=0)
    first = TVMBackend(trials=8, cache_dir=tmp_path).compile(first_model, inputs)

    database = Path(first.info["database"])
    assert first.info["tuned"] is True and first.info["reused_database"] is False
    assert database.parent == tmp_path
    records = _record_count(database)
    assert records > 0 and first.info["new_trials"] == records
    _check_matches_eager(first_model, first, inputs)

    # Same structure, other weights: the key ignores parameter values, so the database is
    # reused without a single new trial, and the outputs follow the new weights.
    second_model = _seeded(TinyConv(), seed=1)
    second = TVMBackend(trials=8, cache_dir=tmp_path).compile(second_model, inputs)
    assert second.info["reused_database"] is True and second.info["new_trials"] == 0
    assert second.info["database"] == str(database)
    assert _record_count(database) == records
    _check_matches_eager(second_model, second, inputs)


def test_default_cache_root_honours_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_root() == tmp_path / "graphopt" / "tvm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "graphopt" / "tvm"


def test_run_rejects_wrong_inputs() -> None:
    model = _seeded(TinyConv())
    inputs = (torch.randn(1, 3, 8, 8),)
    compiled = TVMBackend().compile(model, inputs)
    good = to_numpy_inputs(inputs)[0]

    with pytest.raises(BackendError, match="expects 1 input"):
        compiled.run([good, good])
    with pytest.raises(BackendError, match=r"input 0: expected shape \(1, 3, 8, 8\)"):
        compiled.run([np.zeros((2, 3, 8, 8), dtype=np.float32)])
    with pytest.raises(BackendError, match="dtype float32"):
        compiled.run([good.astype(np.float64)])


def test_unsupported_op_is_named() -> None:
    with pytest.raises(BackendError, match="mystery"):
        TVMBackend().compile(UsesMystery(), (torch.randn(2, 3),))


def test_bad_options_and_targets() -> None:
    with pytest.raises(RecipeError, match="trials"):
        TVMBackend(trials=-1)
    with pytest.raises(RecipeError, match="threads"):
        TVMBackend(threads=0)
    with pytest.raises(BackendError, match="host CPU only"):
        TVMBackend(target='{"kind": "cuda"}').compile(TinyConv(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(BackendError, match="not valid JSON"):
        TVMBackend(target="{kind: llvm").compile(TinyConv(), (torch.randn(1, 3, 8, 8),))
    with pytest.raises(BackendError, match="tuple of tensors"):
        TVMBackend().compile(TinyConv(), [np.zeros((1, 3, 8, 8))])


def test_missing_tvm_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tvm", None)  # makes `import tvm` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'graphopt\[tvm\]'"):
        TVMBackend().compile(TinyConv(), (torch.randn(1, 3, 8, 8),))


def test_tuning_without_its_dependencies_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "xgboost", None)  # find_spec now reports it missing
    with pytest.raises(BackendUnavailableError, match="xgboost"):
        TVMBackend(trials=4, cache_dir=tmp_path).compile(TinyConv(), (torch.randn(1, 3, 8, 8),))
    assert not any(tmp_path.iterdir())
