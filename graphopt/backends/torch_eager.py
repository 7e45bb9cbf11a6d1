"""The baseline backend: the module itself, run by PyTorch eager under ``inference_mode``.

It goes through the same ``CompiledModel`` interface as ONNX Runtime and TVM (numpy in,
numpy out), so the baseline pays the same conversion costs and every backend is timed and
checked by the same code. ``compile`` snapshots the module (a deep copy), as the other
backends do by exporting it: a pass that later rewrites the caller's module changes none of
them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch import nn

from graphopt.backends.base import describe_model, flat_torch_outputs
from graphopt.errors import BackendError
from graphopt.options import Configurable, Options

__all__ = ["TorchEagerBackend", "TorchEagerCompiled"]


class TorchEagerCompiled:
    """A snapshot of a module, run eagerly on numpy inputs."""

    backend = "torch"

    def __init__(self, module: nn.Module, threads: int | None, info: dict[str, Any]) -> None:
        self._module = module
        self._threads = threads
        self.info = info

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        # from_numpy shares memory; a read-only array would make torch warn, so copy those.
        tensors = [torch.from_numpy(a if a.flags.writeable else a.copy()) for a in inputs]
        with _num_threads(self._threads), torch.inference_mode():
            try:
                outputs = self._module(*tensors)
            except Exception as exc:
                raise BackendError(
                    f"torch: running {self.info['model']} failed: {type(exc).__name__}: "
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Check the "
                    f"inputs against the example shapes {self.info['input_shapes']}"
                ) from exc
        return flat_torch_outputs(outputs)


class TorchEagerBackend(Configurable):
    """PyTorch eager execution; ``threads=None`` keeps torch's process-wide thread count."""

    name = "torch"

    class Options(Options):
        threads: int | None = Field(None, ge=1, description="torch threads (None: as set)")

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
    ) -> TorchEagerCompiled:
        if not isinstance(model, nn.Module):
            raise BackendError(
                f"torch: model must be a torch.nn.Module, got {type(model).__name__}"
            )
        info = {
            "model": describe_model(model),
            "threads": self.threads or torch.get_num_threads(),
            "torch_version": torch.__version__,
            "input_shapes": [list(t.shape) for t in example_inputs],
        }
        return TorchEagerCompiled(copy.deepcopy(model), self.threads, info)


@contextlib.contextmanager
def _num_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` for one call only: ``torch.set_num_threads`` is process-wide."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
