"""The host the TVM backend compiles for: its LLVM target, its cores, TVM's thread pool.

Why threads are set here: TVM's runtime assumes hyper-threading on x86 and uses half the
logical CPUs (1 on a 2-vCPU VM) unless ``TVM_NUM_THREADS`` is set, so we set it to the
physical core count before the pool is first used. Why targets are parsed here: TVM 0.27's
``Target()`` takes a kind name or a JSON object and rejects the older ``"llvm -mcpu=..."``
string, which recipes still use.
"""

from __future__ import annotations

import json
import os
from typing import Any

from graphopt.errors import BackendError

__all__ = ["default_threads", "describe_target", "reserve_runtime_threads", "resolve_target"]


def default_threads() -> int:
    """Physical cores available to this process (TVM's own guess halves them on every x86)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        physical = os.cpu_count() or 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, available))


def reserve_runtime_threads(threads: int) -> None:
    """Size TVM's thread pool before its first use; it is sized once per thread, from the env.

    Without ``TVM_NUM_THREADS`` the runtime takes half the logical CPUs on x86 (it assumes
    hyper-threading), i.e. 1 thread on a 2-vCPU VM. A user-set value is respected.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(max(threads, default_threads())))


def resolve_target(tvm: Any, spec: str | None, threads: int) -> Any:
    """The ``tvm.target.Target`` for ``spec`` (None: the host CPU with its real ``mcpu``).

    Only llvm targets are accepted: the VM runs on ``tvm.cpu()``. ``num-cores`` defaults to
    ``threads``, because it is MetaSchedule's parallel extent.
    """
    if spec is None:
        config: dict[str, Any] = {"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()}
    elif spec.lstrip().startswith("{"):
        try:
            config = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise BackendError(f"TVM target {spec!r} is not valid JSON: {exc}") from exc
    else:
        config = _parse_cli_target(spec)
    if not isinstance(config, dict) or config.get("kind") != "llvm":
        kind = config.get("kind") if isinstance(config, dict) else config
        raise BackendError(
            f"TVMBackend runs on the host CPU only; target kind {kind!r} is not supported, "
            "use an llvm target (or None for the host)"
        )
    config.setdefault("num-cores", threads)  # MetaSchedule's parallel extent
    try:
        return tvm.target.Target(config)
    except Exception as exc:
        raise BackendError(f"TVM rejected target {spec!r}: {exc}") from exc


def describe_target(target: Any) -> dict[str, Any]:
    """The target as a plain dict (``kind``, ``mcpu``, ``num-cores``, …) for reports."""
    return json.loads(str(target))


def _parse_cli_target(spec: str) -> dict[str, Any]:
    """Accept the pre-0.27 ``"llvm -mcpu=x -num-cores=4"`` form, which Target() now rejects."""
    kind, *flags = spec.split()
    config: dict[str, Any] = {"kind": kind}
    for flag in flags:
        name, sep, value = flag.lstrip("-").partition("=")
        if not sep:
            raise BackendError(
                f"TVM target flag {flag!r} in {spec!r} is not of the form -key=value"
            )
        config[name] = int(value) if value.isdigit() else value
    return config
