"""The backend registry: names, aliases, option checking, lazy imports."""

from __future__ import annotations

import sys

import pytest
import torch

from graphopt.backends import available_backends, get_backend, known_backends
from graphopt.backends.base import Backend
from graphopt.backends.onnxruntime import OnnxRuntimeBackend
from graphopt.backends.torch_eager import TorchEagerBackend
from graphopt.errors import BackendUnavailableError, RecipeError


def test_torch_backend_by_name() -> None:
    backend = get_backend("torch", threads=1)
    assert isinstance(backend, TorchEagerBackend)
    assert isinstance(backend, Backend)
    assert backend.name == "torch"
    assert backend.threads == 1


@pytest.mark.parametrize("name", ["onnxruntime", "ort", "ORT", " OnnxRuntime "])
def test_onnxruntime_by_name_and_alias(name: str) -> None:
    backend = get_backend(name, opset=20, intra_op_threads=2)
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.name == "onnxruntime"
    assert (backend.opset, backend.intra_op_threads) == (20, 2)


def test_tvm_is_loaded_lazily_by_name() -> None:
    backend = get_backend("tvm", trials=0)
    assert backend.name == "tvm"
    assert type(backend).__module__ == "graphopt.backends.tvm"


def test_missing_tvm_runtime_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tvm", None)  # makes `import tvm` raise ImportError
    assert "tvm" not in available_backends()
    backend = get_backend("tvm")  # the backend's options need no TVM; compiling does
    with pytest.raises(BackendUnavailableError, match="tvm"):
        backend.compile(torch.nn.Linear(2, 2), (torch.randn(1, 2),))


def test_a_broken_graphopt_tvm_module_raises_instead_of_reading_as_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # graphopt's own modules are not optional: an import bug there must surface as itself
    monkeypatch.setitem(sys.modules, "graphopt.backends.tvm", None)
    with pytest.raises(ImportError, match=r"graphopt\.backends\.tvm"):
        get_backend("tvm")


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(RecipeError) as info:
        get_backend("tensorrt")
    message = str(info.value)
    assert "'tensorrt'" in message
    for name in ("torch", "onnxruntime", "ort", "tvm"):
        assert name in message


def test_unknown_option_is_named() -> None:
    with pytest.raises(RecipeError) as info:
        get_backend("onnxruntime", opsett=18)
    assert "opsett" in str(info.value)
    assert "opset" in str(info.value).replace("opsett", "")


def test_bad_option_value_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError, match="optimization"):
        get_backend("ort", optimization="fastest")


def test_non_string_name() -> None:
    with pytest.raises(RecipeError, match="string"):
        get_backend(3)  # type: ignore[arg-type]


def test_known_and_available_backends() -> None:
    assert known_backends() == ["onnxruntime", "ort", "torch", "tvm"]
    available = available_backends()
    assert available[:2] == ["torch", "onnxruntime"]
    assert set(available) <= {"torch", "onnxruntime", "tvm"}


def test_each_call_builds_a_new_backend() -> None:
    first, second = get_backend("ort", opset=18), get_backend("ort", opset=20)
    assert first is not second
    assert first.opset == 18
