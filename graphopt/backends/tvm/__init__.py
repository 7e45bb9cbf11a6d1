"""TVM backend: torch.export → Relax → (optionally MetaSchedule-tuned) LLVM → Relax VM.

``TVMBackend.compile`` is the pipeline, one named step from each module:

1. ``lower.export``: ``torch.export`` with the example's static shapes, QDQ ops in plain ATen;
2. ``lower.to_relax``: the Relax module, parameters bound as constants;
3. ``lower.prepare``: decompose, legalize and fuse, as MetaSchedule's own pipeline does;
4. with ``trials``: ``tuning.tune_cached`` into an on-disk database keyed by the module's
   structure, target and TVM version, then ``tuning.apply_database`` (tuned schedules,
   pre-packed weights);
5. ``runtime.build``: ``tvm.compile`` for the host CPU (``target``) and a ``relax.VirtualMachine``;
   with ``rpc``, ``rpc.build_remote``: the library exported, uploaded and run by a VM on a
   remote device found through TVM's RPC tracker (tuning then measures there too).

Why tuning is part of the backend: untuned, TVM 0.27 leaves conv and matmul as naive loops, so
untuned numbers are only good for checking numerics; ``trials > 0`` runs MetaSchedule and the
report says which one it was (``info["tuned"]``). TVM itself is imported only inside
``compile`` (``runtime.import_tvm``): importing this package never needs it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from graphopt.backends.tvm.lower import export, prepare, to_relax
from graphopt.backends.tvm.rpc import (
    RemoteTVMModel,
    RPCOptions,
    build_remote,
    connect,
    describe_device,
    release_for_tuning,
    remote_target,
)
from graphopt.backends.tvm.runtime import (
    TVMCompiledModel,
    build,
    compile_executable,
    import_tvm,
    input_specs,
)
from graphopt.backends.tvm.target import (
    default_threads,
    describe_target,
    reserve_runtime_threads,
    resolve_target,
)
from graphopt.backends.tvm.tuning import (
    apply_database,
    cache_key,
    check_tuning_dependencies,
    default_cache_root,
    tune_cached,
)
from graphopt.capture import as_input_tuple
from graphopt.errors import BackendError
from graphopt.options import Configurable, Options
from graphopt.shapes import declared_shapes, describe

__all__ = ["RPCOptions", "RemoteTVMModel", "TVMBackend", "TVMCompiledModel", "default_cache_root"]

_UNTUNED_NOTE = (
    "untuned: TVM's default CPU pipeline leaves conv/matmul as naive loops; "
    "latency is not representative, pass trials > 0 to tune"
)


# Why TVM compiles declared-dynamic dimensions at the example's size: Relax takes torch.export's
# symbols (from_exported_program maps them to shape variables), but on TVM 0.27 legalizing a
# BERT encoder with a symbolic sequence fails ("emit_te now only supports Tensor that has
# ShapeExpr shape"), and MetaSchedule tunes one kernel set per static shape anyway. The ONNX
# Runtime export keeps them symbolic; TVM users compile once per size they serve.
_STATIC_NOTE = (
    "TVM compiles one kernel set per input shape: the declared dynamic dimensions ({names}) "
    "are fixed at the example's size here (the ONNX export keeps them symbolic)"
)


class TVMBackend(Configurable):
    """Compile a module with TVM Relax for the host CPU, tuned with MetaSchedule on request.

    ``trials`` is the MetaSchedule budget summed over all tasks (0: no tuning, numerics only).
    ``cache_dir`` replaces the cache root (``default_cache_root()``); each model structure and
    target gets its own ``<key>/`` folder below it. ``target`` is a TVM target as a kind name
    (``"llvm"``), a JSON object string, or the old ``"llvm -mcpu=..."`` form; None means the
    host CPU with its real ``mcpu``. ``threads`` is the runtime (and tuning) thread count;
    None means the physical cores. ``rpc`` (``{tracker: HOST:PORT, key: NAME}``) runs and
    times the model on a remote device from TVM's RPC tracker (``graphopt.backends.tvm.rpc``);
    without ``target`` it compiles for the remote's own CPU.
    """

    name = "tvm"

    class Options(Options):
        trials: int = Field(0, ge=0, description="MetaSchedule tuning trials (0: untuned)")
        cache_dir: str | Path | None = Field(None, description="tuning database folder")
        target: str | None = Field(
            None, min_length=1, description="TVM target (default: this CPU, detected)"
        )
        threads: int | None = Field(None, ge=1, description="TVM runtime threads")
        rpc: RPCOptions | None = Field(None, description="a remote device via an RPC tracker")

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.cache_root = Path(self.cache_dir).expanduser() if self.cache_dir else None

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
    ) -> TVMCompiledModel | RemoteTVMModel:
        tvm, relax = import_tvm()
        if self.trials > 0:
            check_tuning_dependencies()
        inputs = as_input_tuple(example_inputs, error=BackendError)
        remote = connect(self.rpc) if self.rpc is not None else None
        threads = self.threads or default_threads()
        if remote is None:
            reserve_runtime_threads(threads)
            target = resolve_target(tvm, self.target, threads)
        else:
            threads = self.threads or int(remote.get_function("runtime.NumThreads")())
            spec = self.target or json.dumps(remote_target(remote, self.rpc))
            target = resolve_target(tvm, spec, threads)
        mod = to_relax(export(model, inputs))
        key = cache_key(tvm, mod, target)
        if self.rpc is not None:  # timed on that device: its own database, not the host's
            key = f"{key}-rpc-{re.sub(r'[^A-Za-z0-9_.-]', '_', self.rpc.key)}"
        with target:
            prepared = prepare(tvm, relax, mod, for_tuning=self.trials > 0)
        info: dict[str, Any] = {"target": json.dumps(describe_target(target)), "threads": threads}
        if self.trials > 0:
            work_dir = (self.cache_root or default_cache_root()) / key
            if self.rpc is not None:  # the runner needs a server: let go of ours while tuning
                remote = None
                release_for_tuning(self.rpc)
            info.update(
                tune_cached(tvm, prepared, target, work_dir, self.trials, threads, rpc=self.rpc)
            )
            prepared = apply_database(tvm, relax, prepared, target, work_dir)
        else:
            info.update(tuned=False, trials=0, note=_UNTUNED_NOTE)
        declared = describe(declared_shapes(model))
        if declared:  # measured on TVM 0.27: see _STATIC_NOTE
            info["static_shapes"] = [list(t.shape) for t in inputs]
            info["dynamic_dims_note"] = _STATIC_NOTE.format(
                names=", ".join(sorted({d["name"] for d in declared}))
            )
        if self.rpc is None:
            return build(tvm, relax, prepared, target, inputs, info, threads)
        remote = remote or connect(self.rpc)
        info["device"] = describe_device(remote, self.rpc, target)
        executable = compile_executable(tvm, prepared, target, info)
        return build_remote(tvm, relax, executable, remote, self.rpc, input_specs(inputs), info)
