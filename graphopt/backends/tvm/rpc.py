"""Measuring on a remote device through TVM's RPC tracker (``tvm: {rpc: {tracker, key}}``).

The flow, in TVM 0.27's API: ``rpc.connect_tracker(host, port).request(key)`` gives a session
on a free server registered under ``key``; the compiled executable is written with
``export_library`` (the host's C compiler, or ``cross_compiler`` for another architecture),
``remote.upload``-ed, ``remote.load_module``-ed and run by a ``relax.VirtualMachine`` on
``remote.cpu()``. Inputs and outputs cross the network through the VM's stateful API
(``set_input`` / ``invoke_stateful`` / ``get_outputs``), which works over RPC where calling
``vm["main"]`` returns an opaque remote tuple.

What the latency means: the report's timing loop calls ``run``, so over RPC each sample is the
round trip (inputs up, one call, outputs down). The device's own time is measured once at
compile with the VM's ``time_evaluator`` on the remote (``info["device_ms"]``, median), and the
report names the device (``info["device"]``: key, tracker, the remote's CPU and triple).

Without ``target`` the remote describes itself (its LLVM CPU and triple, when its runtime has
LLVM); a minimal runtime cannot, and then ``target`` must be given. Tuning measures on the
remote with MetaSchedule's ``RPCRunner`` (``tuning_runner``); building stays local.

Why the tracker's summary is read first: a request for a key no server registered waits
forever in TVM's client; asking the tracker what it has turns that into one clear error. Why
a live session is shared: a server serves one session at a time, so the second model of a
comparison (original, compressed) requesting its own would wait forever for the first; one
session loads both. It is held only by the models on it (a weak registry), so the server is
free again once they are gone. Tuning needs a free server for MetaSchedule's runner while this
process holds none or one that the tracker can spare (``release_for_tuning``): with one server
held by a model already measured, it says so instead of waiting forever. Each upload has its
own file name: the remote ``dlopen`` returns the already loaded library for a path it has seen.
"""

from __future__ import annotations

import socket
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from graphopt.errors import BackendError
from graphopt.options import Options

__all__ = [
    "RPCOptions",
    "RemoteTVMModel",
    "build_remote",
    "connect",
    "describe_device",
    "release_for_tuning",
    "remote_target",
    "tuning_runner",
]

_CONNECT_TIMEOUT_S = 5.0
_FREE_WAIT_S = 30.0  # a server re-registers with its tracker a moment after a session ends
# (tracker, key) → the live session the models of this process share (weak: see the docstring)
_SESSIONS: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()


class RPCOptions(Options):
    """Where the remote device is: a tracker and the key its servers registered with."""

    owner = "tvm.rpc"
    tracker: str = Field(
        pattern=r"^[^\s:]+:[0-9]{1,5}$", description="the RPC tracker as HOST:PORT"
    )
    key: str = Field(min_length=1, description="device key the RPC servers registered with")
    priority: int = Field(1, ge=0, description="request priority at the tracker")
    session_timeout_s: float = Field(0, ge=0, description="session length limit (0: none)")
    cross_compiler: str | None = Field(
        None, min_length=1, description="C++ compiler for the remote's library, e.g. aarch64-g++"
    )
    device_runs: int = Field(10, ge=1, description="calls per repeat of the device timing")
    device_repeats: int = Field(3, ge=1, description="repeats of the device timing (median)")

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.tracker.rpartition(":")
        return host, int(port)


def connect(options: RPCOptions) -> Any:
    """A session on a free server of ``options.key``; one clear error when there is none.

    A live session of this process is reused (see the module docstring)."""
    held = _SESSIONS.get((options.tracker, options.key))
    if held is not None:
        try:
            held.get_function("runtime.NumThreads")()  # still alive?
            return held
        except Exception:
            _SESSIONS.pop((options.tracker, options.key), None)
    session = _request(options)
    _SESSIONS[(options.tracker, options.key)] = session
    return session


def _request(options: RPCOptions) -> Any:
    from tvm import rpc

    host, port = options.address
    try:  # TVM's own connect retries for 60 s; a tracker that is not there fails in seconds
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise BackendError(
            f"cannot reach the TVM RPC tracker {options.tracker}: {exc.strerror or exc}; start "
            "one with python -m tvm.exec.rpc_tracker, or fix tvm.rpc.tracker"
        ) from exc
    try:
        tracker = rpc.connect_tracker(host, port)
        summary = tracker.summary()
    except Exception as exc:
        raise BackendError(
            f"cannot reach the TVM RPC tracker {options.tracker}: {_first_line(exc)}; start one "
            "with python -m tvm.exec.rpc_tracker, or fix tvm.rpc.tracker"
        ) from exc
    keys = sorted((summary.get("queue_info") or {}).keys())
    if options.key not in keys:
        raise BackendError(
            f"the TVM RPC tracker {options.tracker} has no device {options.key!r} "
            f"(registered: {', '.join(keys) or 'none'}); start a server with "
            f"python -m tvm.exec.rpc_server --tracker {options.tracker} --key {options.key}"
        )
    try:
        return tracker.request(
            options.key, priority=options.priority, session_timeout=options.session_timeout_s
        )
    except Exception as exc:
        raise BackendError(
            f"the TVM RPC tracker {options.tracker} gave no session on {options.key!r}: "
            f"{_first_line(exc)}"
        ) from exc


def release_for_tuning(options: RPCOptions) -> None:
    """Before MetaSchedule's ``RPCRunner`` requests sessions: make sure one can be granted.

    The caller has dropped its own reference; a session still alive here is held by a model
    compiled earlier, and then the tracker must have another free server of the key.
    """
    if _SESSIONS.get((options.tracker, options.key)) is None:
        return  # nothing held: the runner's requests wait for the server like any client
    from tvm import rpc

    host, port = options.address
    deadline = time.monotonic() + _FREE_WAIT_S
    while True:
        queue = (rpc.connect_tracker(host, port).summary().get("queue_info") or {}).get(
            options.key, {}
        )
        if queue.get("free", 0) > 0:
            return
        if time.monotonic() > deadline:
            raise BackendError(
                f"tuning over RPC needs a free server of {options.key!r}, but this process "
                f"holds the only one (a model compiled before is still on it); register a "
                f"second server with --key {options.key}, or tune this model alone first (the "
                "database is cached, so a later run only measures)"
            )
        time.sleep(0.5)


def remote_target(remote: Any, options: RPCOptions) -> dict[str, Any]:
    """The remote's LLVM target as it describes itself (its CPU and triple)."""
    try:
        cpu = remote.get_function("target.llvm_get_system_cpu")()
        triple = remote.get_function("target.llvm_get_system_triple")()
    except Exception as exc:
        raise BackendError(
            f"the remote device {options.key!r} cannot describe its CPU (its runtime has no "
            'LLVM); give its target, e.g. tvm: {target: \'{"kind": "llvm", "mtriple": '
            f'"aarch64-linux-gnu", "mcpu": "cortex-a72"}}\'}} ({_first_line(exc)})'
        ) from exc
    return {"kind": "llvm", "mcpu": str(cpu), "mtriple": str(triple)}


def describe_device(remote: Any, options: RPCOptions, target: Any) -> dict[str, Any]:
    """What the report says about the device: key, tracker, the remote's own CPU, threads."""
    device: dict[str, Any] = {"rpc_key": options.key, "tracker": options.tracker}
    for name, func in (
        ("remote_cpu", "target.llvm_get_system_cpu"),
        ("remote_triple", "target.llvm_get_system_triple"),
        ("remote_threads", "runtime.NumThreads"),
    ):
        try:
            device[name] = remote.get_function(func)()
        except Exception:  # a minimal runtime lacks some: say what is known
            device[name] = None
    device["target"] = str(target)
    return device


def build_remote(
    tvm: Any,
    relax: Any,
    executable: Any,
    remote: Any,
    options: RPCOptions,
    input_specs: Sequence[tuple[tuple[int, ...], np.dtype]],
    info: dict[str, Any],
) -> RemoteTVMModel:
    """Export, upload and load ``executable`` on ``remote``; time it there once."""
    with tempfile.TemporaryDirectory(prefix="graphopt-tvm-rpc-") as tmp:
        name = f"graphopt_{uuid.uuid4().hex[:12]}.so"
        path = Path(tmp) / name
        try:
            if options.cross_compiler:
                from tvm.contrib import cc

                executable.export_library(
                    str(path), fcompile=cc.cross_compiler(options.cross_compiler)
                )
            else:
                executable.export_library(str(path))
            remote.upload(str(path))
            module = remote.load_module(name)
        except Exception as exc:
            raise BackendError(
                f"cannot load the compiled model on the remote device {options.key!r}: "
                f"{_first_line(exc)} (a remote of another architecture needs tvm.rpc."
                "cross_compiler and a target for it)"
            ) from exc
    device = remote.cpu()
    vm = relax.VirtualMachine(module, device)
    model = RemoteTVMModel(tvm, vm, device, remote, input_specs, info)
    info["device_ms"] = model.device_time_ms(options.device_runs, options.device_repeats)
    info["latency_note"] = (
        "measured over RPC: each sample is a round trip (inputs up, outputs down); "
        "device_ms is the device's own time (time_evaluator on the remote)"
    )
    return model


class RemoteTVMModel:
    """A Relax VM on a remote device; ``run`` takes and returns numpy arrays like the local one.

    Holds the RPC session: the remote module lives as long as this object.
    """

    backend = "tvm"

    def __init__(
        self,
        tvm: Any,
        vm: Any,
        device: Any,
        session: Any,
        input_specs: Sequence[tuple[tuple[int, ...], np.dtype]],
        info: dict[str, Any],
    ) -> None:
        self._tvm, self._vm, self._device, self._session = tvm, vm, device, session
        self._input_specs = tuple(input_specs)
        self.info = info

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        from graphopt.backends.tvm.runtime import check_inputs, flatten_outputs

        arrays = check_inputs(inputs, self._input_specs)
        self._set_inputs(arrays)
        try:
            self._vm.invoke_stateful("main")
            result = self._vm.get_outputs("main")
        except Exception as exc:
            raise BackendError(f"TVM VM failed on the remote device: {_first_line(exc)}") from exc
        return flatten_outputs(result)

    def device_time_ms(self, runs: int, repeats: int) -> float:
        """Median ms of ``main`` timed on the device itself, over the example-shaped inputs."""
        zeros = [np.zeros(shape, dtype) for shape, dtype in self._input_specs]
        self._set_inputs(zeros)
        timer = self._vm.time_evaluator(
            "invoke_stateful", self._device, number=runs, repeat=repeats
        )
        return float(timer("main").median * 1e3)

    def _set_inputs(self, arrays: Sequence[np.ndarray]) -> None:
        tensors = [self._tvm.runtime.tensor(a, device=self._device) for a in arrays]
        self._vm.set_input("main", *tensors)


def tuning_runner(ms: Any, options: RPCOptions, timeout_s: float) -> Any:
    """MetaSchedule's ``RPCRunner``: tuning candidates measured on the remote device."""
    host, port = options.address
    config = ms.runner.RPCConfig(
        tracker_host=host,
        tracker_port=port,
        tracker_key=options.key,
        session_priority=options.priority,
        session_timeout_sec=timeout_s,
    )
    return ms.runner.RPCRunner(rpc_config=config)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
