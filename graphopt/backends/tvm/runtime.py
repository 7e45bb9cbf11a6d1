"""The compiled TVM model: build the Relax VM, check inputs, run it, size its thread pool.

Why inputs are checked here and not left to the VM: TVM compiles for the example's static
shapes, and the VM's own errors say neither which input is wrong nor what to do about it.
``tvm`` is imported only inside functions (and by ``import_tvm``), so importing this module
never needs TVM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from graphopt.errors import BackendError, BackendUnavailableError

__all__ = [
    "INSTALL_HINT",
    "TVMCompiledModel",
    "build",
    "check_inputs",
    "compile_executable",
    "flatten_outputs",
    "import_tvm",
    "input_specs",
]

INSTALL_HINT = "pip install 'graphopt[tvm]'"


def import_tvm() -> tuple[Any, Any]:
    """``(tvm, tvm.relax)``, or a ``BackendUnavailableError`` that says how to install them."""
    try:
        import tvm
        from tvm import relax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the TVM backend needs Apache TVM >= 0.27, which is not importable ({exc}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc
    return tvm, relax


class TVMCompiledModel:
    """A Relax VM for one static input signature; ``run`` takes and returns numpy arrays."""

    backend = "tvm"

    def __init__(
        self,
        vm: Any,
        input_specs: Sequence[tuple[tuple[int, ...], np.dtype]],
        info: dict[str, Any],
        threads: int,
    ) -> None:
        self._vm = vm
        self._main = vm["main"]
        self._input_specs = tuple(input_specs)
        self._threads = threads
        self.info = info

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        import tvm

        arrays = check_inputs(inputs, self._input_specs)
        self._apply_threads()
        try:
            result = self._main(*(tvm.runtime.tensor(a) for a in arrays))
        except Exception as exc:
            raise BackendError(f"TVM VM failed running the compiled model: {exc}") from exc
        return flatten_outputs(result)

    @property
    def threads(self) -> int:
        """Threads TVM's pool really uses for this model (the pool never grows once sized)."""
        self._apply_threads()
        return self._threads

    def _apply_threads(self) -> None:
        """The pool is per process and thread; another model may have resized it since."""
        import tvm

        num_threads = tvm.get_global_func("runtime.NumThreads")
        if num_threads() != self._threads:
            tvm.get_global_func("runtime.config_threadpool")(0, self._threads)  # 0: kBig
            self._threads = num_threads()


def check_inputs(
    inputs: Sequence[np.ndarray], specs: Sequence[tuple[tuple[int, ...], np.dtype]]
) -> list[np.ndarray]:
    """Check count, shape and dtype here: the VM's own errors do not say which input."""
    if len(inputs) != len(specs):
        raise BackendError(
            f"TVM model expects {len(specs)} input(s), got {len(inputs)}; "
            "pass the same number of arrays as example inputs at compile time"
        )
    arrays = []
    for i, (value, (shape, dtype)) in enumerate(zip(inputs, specs, strict=True)):
        array = np.asarray(value)
        if array.shape != shape or array.dtype != dtype:
            raise BackendError(
                f"TVM input {i}: expected shape {shape} and dtype {dtype}, got "
                f"{array.shape} {array.dtype}; TVM compiles for the example's static shapes, "
                "so recompile with an example of this shape (or cast the array)"
            )
        arrays.append(np.ascontiguousarray(array))
    return arrays


def build(
    tvm: Any,
    relax: Any,
    prepared: Any,
    target: Any,
    inputs: tuple[torch.Tensor, ...],
    info: dict[str, Any],
    threads: int,
) -> TVMCompiledModel:
    """``tvm.compile`` the lowered module and load it into a VM on the host CPU.

    ``info["threads"]`` is updated to what the pool really uses, which a user-set
    ``TVM_NUM_THREADS`` may cap below the requested count.
    """
    executable = compile_executable(tvm, prepared, target, info)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    compiled = TVMCompiledModel(vm, input_specs(inputs), info, threads)
    info["threads"] = compiled.threads
    return compiled


def compile_executable(tvm: Any, prepared: Any, target: Any, info: dict[str, Any]) -> Any:
    """``tvm.compile`` with the failure named (the executable runs here or on a remote)."""
    try:
        return tvm.compile(prepared, target=target)
    except Exception as exc:
        raise BackendError(f"tvm.compile failed for target {info['target']}: {exc}") from exc


def input_specs(inputs: Sequence[torch.Tensor]) -> list[tuple[tuple[int, ...], np.dtype]]:
    """``(shape, numpy dtype)`` per example input: what the compiled model accepts."""
    return [(tuple(t.shape), _numpy_dtype(t)) for t in inputs]


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    try:
        return torch.empty(0, dtype=tensor.dtype).numpy().dtype
    except TypeError as exc:  # e.g. bfloat16 has no numpy dtype
        raise BackendError(
            f"TVM backend: input dtype {tensor.dtype} has no numpy equivalent; cast the input"
        ) from exc


def flatten_outputs(result: Any) -> list[np.ndarray]:
    """The VM returns a tensor or (nested) tuples of them; flatten in order, like pytree."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    if isinstance(result, (list, tuple)) or type(result).__name__ == "Array":
        return [array for item in result for array in flatten_outputs(item)]
    raise BackendError(f"TVM VM returned an unexpected {type(result).__name__}")
