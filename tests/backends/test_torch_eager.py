"""The torch eager baseline: numpy in/out, snapshot semantics, per-call thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graphopt.backends.base import CompiledModel, flat_torch_outputs, to_numpy_inputs
from graphopt.backends.torch_eager import TorchEagerBackend
from graphopt.capture import trace
from graphopt.errors import BackendError, RecipeError


class TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = torch.relu(self.bn(self.conv(x)))
        return {"features": y, "logits": self.fc(y.mean(dim=(2, 3)))}


@pytest.fixture
def case() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return TwoOutputs().eval(), (torch.randn(2, 3, 8, 8),)


def test_outputs_equal_eager_as_flat_numpy(case: tuple) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    compiled = TorchEagerBackend().compile(gm, inputs)
    assert isinstance(compiled, CompiledModel)
    assert compiled.backend == "torch"
    outputs = compiled.run(to_numpy_inputs(inputs))
    with torch.no_grad():
        reference = flat_torch_outputs(model(*inputs))
    assert [type(o) for o in outputs] == [np.ndarray, np.ndarray]
    assert [o.shape for o in outputs] == [(2, 4, 8, 8), (2, 3)]
    for got, want in zip(outputs, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert compiled.info["model"] == "GraphModule(TwoOutputs)"


def test_compile_snapshots_the_model(case: tuple) -> None:
    model, inputs = case
    compiled = TorchEagerBackend().compile(model, inputs)
    before = compiled.run(to_numpy_inputs(inputs))
    with torch.no_grad():
        model.fc.weight.zero_()
    after = compiled.run(to_numpy_inputs(inputs))
    np.testing.assert_array_equal(before[1], after[1])
    assert np.any(before[1] != 0)


def test_threads_apply_per_call_and_are_restored(case: tuple) -> None:
    model, inputs = case
    previous = torch.get_num_threads()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    compiled = TorchEagerBackend(threads=1).compile(model, inputs)
    compiled.run(to_numpy_inputs(inputs))
    assert seen == [1]
    assert torch.get_num_threads() == previous
    assert compiled.info["threads"] == 1


def test_read_only_inputs_are_accepted(case: tuple) -> None:
    model, inputs = case
    arrays = to_numpy_inputs(inputs)
    for a in arrays:
        a.flags.writeable = False
    outputs = TorchEagerBackend().compile(model, inputs).run(arrays)
    assert outputs[1].shape == (2, 3)


def test_runs_under_inference_mode(case: tuple) -> None:
    model, inputs = case
    flags: list[bool] = []
    compiled = TorchEagerBackend().compile(model, inputs)
    compiled._module.register_forward_pre_hook(
        lambda *_: flags.append(torch.is_inference_mode_enabled())
    )
    compiled.run(to_numpy_inputs(inputs))
    assert flags == [True]


def test_run_failure_is_a_backend_error(case: tuple) -> None:
    model, inputs = case
    compiled = TorchEagerBackend().compile(model, inputs)
    with pytest.raises(BackendError, match="torch: running TwoOutputs failed"):
        compiled.run([np.zeros((2, 5, 8, 8), dtype=np.float32)])


@pytest.mark.parametrize("threads", [0, -1, 2.5, True])
def test_invalid_threads_name_the_option(threads: object) -> None:
    with pytest.raises(RecipeError, match="threads"):
        TorchEagerBackend(threads=threads)  # type: ignore[arg-type]


def test_non_module_is_refused() -> None:
    with pytest.raises(BackendError, match=r"torch\.nn\.Module"):
        TorchEagerBackend().compile(lambda x: x, (torch.zeros(1),))  # type: ignore[arg-type]
