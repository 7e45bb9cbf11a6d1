"""TVM backend: torch.export → Relax → (optionally MetaSchedule-tuned) LLVM → Relax VM.

Why tuning is part of the backend and not an afterthought: TVM 0.27's default CPU pipeline
legalizes every op to plain TIR loops and schedules none of them, so an untuned conv or matmul
runs as naive scalar loops (orders of magnitude slower than ONNX Runtime). Untuned numbers are
only good for checking numerics; ``trials > 0`` runs MetaSchedule and the report says which
one it was (``info["tuned"]``).

Pipeline, one named step each:

1. ``torch.export.export(..., strict=False)`` with the example's static shapes (TVM compiles
   per shape; the batch is the example's).
2. ``from_exported_program`` with the parameters bound as constants, so ``FoldConstant`` can
   pre-compute weight transposes and the VM takes only the user's inputs.
3. ``_prepare``: the lowering ``MetaScheduleTuneIRMod``'s pipeline uses (decompose BN for
   inference, legalize, fuse), so tuning tasks and the final module agree.
4. With ``trials``: ``extract_tasks`` → ``tune_tasks`` into a JSON database on disk, then
   ``MetaScheduleApplyDatabase`` and weight pre-packing (``_apply_database``). The database
   lives in ``<cache root>/<key>/`` where the key hashes the Relax module's text (parameters
   are constants and not printed, so only the structure counts) with the target and the TVM
   version. A later compile of the same structure on the same target finds the database and
   runs no new trial.
5. ``tvm.compile`` for the host CPU, ``relax.VirtualMachine`` on ``tvm.cpu()``.

Workarounds for this environment, each explained where it lives: MetaSchedule imports
``tvm.s_tir.tensor_intrin`` (20-60 s, mostly CUDA intrinsics) in the tuning process and in
every builder worker, where it outlasted the 30 s build timeout so that every candidate
failed; we register only the CPU intrinsics and build without the import. And TVM's runtime
assumes hyper-threading on x86 and uses half the logical CPUs (1 on a 2-vCPU VM) unless
``TVM_NUM_THREADS`` is set, so we set it to the physical core count.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from graphopt.backends.base import describe_model
from graphopt.cache import atomic_write
from graphopt.capture import as_input_tuple
from graphopt.errors import BackendError, BackendUnavailableError, RecipeError

__all__ = ["TVMBackend", "TVMCompiledModel", "default_cache_root"]

_INSTALL_HINT = "pip install 'graphopt[tvm]'"
_KEY_SCHEMA = "graphopt-tvm-2"  # bump when the pipeline changes what a database holds
_STATE_FILE = "graphopt_tuning.json"
_MAX_TRIALS_PER_ITER = 64  # MetaSchedule's default batch size per task and round
_BUILD_TIMEOUT_S = 300.0
_RUN_TIMEOUT_S = 120.0
_TUNING_LOGGER = logging.getLogger("graphopt.backends.tvm.tuning")


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/graphopt/tvm`` (``~/.cache/graphopt/tvm`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / "tvm"


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

        arrays = self._check_inputs(inputs)
        self._apply_threads()
        try:
            result = self._main(*(tvm.runtime.tensor(a) for a in arrays))
        except Exception as exc:
            raise BackendError(f"TVM VM failed running the compiled model: {exc}") from exc
        return _flatten_outputs(result)

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

    def _check_inputs(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Check count, shape and dtype here: the VM's own errors do not say which input."""
        if len(inputs) != len(self._input_specs):
            raise BackendError(
                f"TVM model expects {len(self._input_specs)} input(s), got {len(inputs)}; "
                "pass the same number of arrays as example inputs at compile time"
            )
        arrays = []
        for i, (value, (shape, dtype)) in enumerate(zip(inputs, self._input_specs, strict=True)):
            array = np.asarray(value)
            if array.shape != shape or array.dtype != dtype:
                raise BackendError(
                    f"TVM input {i}: expected shape {shape} and dtype {dtype}, got "
                    f"{array.shape} {array.dtype}; TVM compiles for the example's static shapes, "
                    "so recompile with an example of this shape (or cast the array)"
                )
            arrays.append(np.ascontiguousarray(array))
        return arrays


class TVMBackend:
    """Compile a module with TVM Relax for the host CPU, tuned with MetaSchedule on request.

    ``trials`` is the MetaSchedule budget summed over all tasks (0: no tuning, numerics only).
    ``cache_dir`` replaces the cache root (``default_cache_root()``); each model structure and
    target gets its own ``<key>/`` folder below it. ``target`` is a TVM target as a kind name
    (``"llvm"``), a JSON object string, or the old ``"llvm -mcpu=..."`` form; None means the
    host CPU with its real ``mcpu``. ``threads`` is the runtime (and tuning) thread count;
    None means the physical cores.
    """

    name = "tvm"

    def __init__(
        self,
        *,
        trials: int = 0,
        cache_dir: str | Path | None = None,
        target: str | None = None,
        threads: int | None = None,
    ) -> None:
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
            raise RecipeError(f"TVMBackend option 'trials' must be an int >= 0, got {trials!r}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise RecipeError(
                f"TVMBackend option 'threads' must be an int >= 1 or None, got {threads!r}"
            )
        if target is not None and not (isinstance(target, str) and target.strip()):
            raise RecipeError(
                f"TVMBackend option 'target' must be a non-empty string or None, got {target!r}"
            )
        self.trials = trials
        self.cache_root = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.target = target
        self.threads = threads

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
    ) -> TVMCompiledModel:
        tvm, relax = _import_tvm()
        if self.trials > 0:
            _check_tuning_dependencies()
        inputs = as_input_tuple(example_inputs, error=BackendError)
        threads = self.threads or _default_threads()
        _reserve_runtime_threads(threads)
        target = _resolve_target(tvm, self.target, threads)
        program = _export(model, inputs)
        mod = _to_relax(program)
        key = _cache_key(tvm, mod, target)
        with target:
            prepared = _prepare(tvm, relax, mod, for_tuning=self.trials > 0)
        info: dict[str, Any] = {"target": json.dumps(_target_dict(target)), "threads": threads}
        if self.trials > 0:
            root = self.cache_root or default_cache_root()
            work_dir = root / key
            tuning = _tune_cached(tvm, prepared, target, work_dir, self.trials, threads)
            info.update(tuning)
            prepared = _apply_database(tvm, relax, prepared, target, work_dir)
        else:
            info.update(
                tuned=False,
                trials=0,
                note="untuned: TVM's default CPU pipeline leaves conv/matmul as naive loops; "
                "latency is not representative, pass trials > 0 to tune",
            )
        try:
            executable = tvm.compile(prepared, target=target)
        except Exception as exc:
            raise BackendError(f"tvm.compile failed for target {info['target']}: {exc}") from exc
        vm = relax.VirtualMachine(executable, tvm.cpu())
        specs = [(tuple(t.shape), _numpy_dtype(t)) for t in inputs]
        compiled = TVMCompiledModel(vm, specs, info, threads)
        info["threads"] = compiled.threads
        return compiled


# --- steps of compile -------------------------------------------------------------------


def _import_tvm() -> tuple[Any, Any]:
    try:
        import tvm
        from tvm import relax
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the TVM backend needs Apache TVM >= 0.27, which is not importable ({exc}); "
            f"install it with: {_INSTALL_HINT}"
        ) from exc
    return tvm, relax


def _check_tuning_dependencies() -> None:
    """MetaSchedule imports these only mid-tuning; failing there would waste the work so far."""
    missing = [
        m for m in ("psutil", "xgboost", "cloudpickle") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise BackendUnavailableError(
            f"TVM tuning (trials > 0) needs {', '.join(missing)}, not installed; install them "
            f"with: {_INSTALL_HINT} (or compile with trials=0)"
        )


def _numpy_dtype(tensor: torch.Tensor) -> np.dtype:
    try:
        return torch.empty(0, dtype=tensor.dtype).numpy().dtype
    except TypeError as exc:  # e.g. bfloat16 has no numpy dtype
        raise BackendError(
            f"TVM backend: input dtype {tensor.dtype} has no numpy equivalent; cast the input"
        ) from exc


def _export(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """Re-export with static shapes: TVM compiles one kernel set per input shape."""
    if not isinstance(model, nn.Module):
        raise BackendError(f"TVM compile needs a torch.nn.Module, got {type(model).__name__}")
    try:
        with torch.no_grad():
            program = torch.export.export(model, inputs, strict=False)
    except Exception as exc:
        raise BackendError(
            f"torch.export failed on {describe_model(model)} before TVM conversion: "
            f"{type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}. Check that the "
            "model runs eagerly on the example inputs (graphopt.capture.trace explains failures)"
        ) from exc
    return _decompose_qdq(program)


def _decompose_qdq(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Spell ``quantized_decomposed`` (QDQ) ops in plain ATen, which TVM's frontend converts.

    ``q = clamp(round(x / s) + z, qmin, qmax)`` and ``x = (q − z) · s``, as the ops define them
    (``round`` is half-to-even, like ONNX's QuantizeLinear); other ops are left as they are.
    """
    from graphopt.backends._qdq_decompositions import QDQ_DECOMPOSITIONS, uses_qdq

    if not uses_qdq(program.graph_module):
        return program
    return program.run_decompositions(QDQ_DECOMPOSITIONS)


def _to_relax(program: torch.export.ExportedProgram) -> Any:
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(program, keep_params_as_input=False)
    except AssertionError as exc:
        # TVM reports unconverted ATen ops with an assert: "Unsupported function types [...]".
        message = str(exc)
        if "Unsupported function types" in message:
            ops = message.split("Unsupported function types", 1)[1].strip()
            raise BackendError(
                f"TVM's PyTorch frontend cannot convert these ops: {ops}. "
                "Rewrite them with supported ops, or use another backend (onnxruntime)"
            ) from exc
        raise BackendError(f"TVM's PyTorch frontend failed: {exc}") from exc
    except Exception as exc:
        raise BackendError(
            f"TVM's PyTorch frontend failed converting the exported program: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _prepare(tvm: Any, relax: Any, mod: Any, *, for_tuning: bool) -> Any:
    """The lowering that tuning and compiling share (what MetaScheduleTuneIRMod's pipeline runs).

    For tuning, weights are also marked layout-free, so MetaSchedule may choose a packed weight
    layout per conv/matmul (see ``_apply_database``).
    """
    passes = [
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    if for_tuning:
        passes.append(relax.transform.AttachAttrLayoutFreeBuffers())
    try:
        return tvm.transform.Sequential(passes)(mod)
    except Exception as exc:
        raise BackendError(f"TVM Relax lowering (legalize/fuse) failed: {exc}") from exc


def _apply_database(tvm: Any, relax: Any, prepared: Any, target: Any, work_dir: Path) -> Any:
    """Swap each fused TIR function for its best tuned schedule; untuned ones stay naive.

    A tuned schedule may start by repacking a weight into a blocked layout. Split out
    (``SplitLayoutRewritePreproc``), that repack takes only a constant, so ``FoldConstant``
    runs it once at compile time instead of on every call: the weights are pre-packed. This
    is ``static_shape_tuning_pipeline(cpu_weight_prepack=True)`` without its separate
    ``transform_params`` step, which bound constants make unnecessary. On ResNet-18 it was
    worth as much as 2.5x the trials (200 prepacked ≈ 500 not).
    """
    from tvm.s_tir import meta_schedule as ms

    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    try:
        with target, database, tvm.transform.PassContext(opt_level=3):
            passes = [  # built inside: the apply pass reads the current target
                relax.transform.MetaScheduleApplyDatabase(),
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.FoldConstant(),
            ]
            return tvm.transform.Sequential(passes)(prepared)
    except Exception as exc:
        raise BackendError(
            f"applying the tuning database {work_dir} failed: {exc}; delete that folder to "
            "tune again, or compile with trials=0"
        ) from exc


# --- target, threads, cache key -----------------------------------------------------------


def _default_threads() -> int:
    """Physical cores available to this process (TVM's own guess halves them on every x86)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        physical = os.cpu_count() or 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else physical
    return max(1, min(physical, available))


def _reserve_runtime_threads(threads: int) -> None:
    """Size TVM's thread pool before its first use; it is sized once per thread, from the env.

    Without ``TVM_NUM_THREADS`` the runtime takes half the logical CPUs on x86 (it assumes
    hyper-threading), i.e. 1 thread on a 2-vCPU VM. A user-set value is respected.
    """
    os.environ.setdefault("TVM_NUM_THREADS", str(max(threads, _default_threads())))


def _resolve_target(tvm: Any, spec: str | None, threads: int) -> Any:
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


def _target_dict(target: Any) -> dict[str, Any]:
    return json.loads(str(target))


def _cache_key(tvm: Any, mod: Any, target: Any) -> str:
    """Hash of the module's structure (constants are not printed) + target + TVM version."""
    digest = hashlib.sha256()
    for part in (_KEY_SCHEMA, tvm.__version__, str(target), mod.script(show_meta=False)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


# --- MetaSchedule tuning with an on-disk database -----------------------------------------


def _tune_cached(
    tvm: Any, prepared: Any, target: Any, work_dir: Path, trials: int, threads: int
) -> dict[str, Any]:
    """Tune only the part of the budget the database in ``work_dir`` has not yet spent.

    ``graphopt_tuning.json`` records the budget a finished tuning run covered; it is written
    last, so an interrupted run is tuned again (its records stay and seed the search).
    """
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(work_dir)
    done = int(state.get("trials", 0))
    records_before = len(ms.database.JSONDatabase(work_dir=str(work_dir)))
    info: dict[str, Any] = {"tuned": True, "trials": trials, "database": str(work_dir)}
    if done >= trials and records_before > 0:
        return {**info, "reused_database": True, "new_trials": 0, "records": records_before}
    tasks = _run_tuning(ms, prepared, target, work_dir, trials - done, threads)
    records = len(ms.database.JSONDatabase(work_dir=str(work_dir)))
    _write_state(work_dir, {"trials": trials, "target": str(target), "tasks": tasks})
    return {
        **info,
        "reused_database": False,
        "previous_trials": done,
        "new_trials": records - records_before,
        "records": records,
        "tasks": tasks,
    }


def _run_tuning(
    ms: Any, prepared: Any, target: Any, work_dir: Path, budget: int, threads: int
) -> int:
    """Tune every task; heaviest first, one equal round each, then MetaSchedule's gradient.

    Why order and round size matter: the gradient scheduler first gives each task one round in
    list order and stops when the global budget is spent, so with small budgets and its default
    64 trials a round, only the first (often trivial) tasks were tuned and the convolutions
    kept naive loops.
    """
    try:
        extracted = [
            t
            for t in ms.relax_integration.extract_tasks(prepared, target)
            if not (t.mod.attrs and t.mod.attrs.get("tirx.is_scheduled", False))
        ]
    except Exception as exc:
        raise BackendError(f"MetaSchedule task extraction failed: {exc}") from exc
    if not extracted:
        return 0
    extracted.sort(key=lambda t: -_task_flops(t) * t.weight)
    with _cpu_tensor_intrinsics():  # TuneContext imports tvm.s_tir.tensor_intrin
        return _tune_tasks(ms, extracted, work_dir, budget, threads)


def _tune_tasks(ms: Any, extracted: list[Any], work_dir: Path, budget: int, threads: int) -> int:
    """Run MetaSchedule's task scheduler over ``extracted`` and append to the JSON database."""
    per_iter = max(1, min(_MAX_TRIALS_PER_ITER, budget // len(extracted)))
    # The search's cost (seconds per round) scales with its population; a round that measures
    # only a few candidates does not need MetaSchedule's default 512.
    population = max(64, min(512, 16 * per_iter))
    seeds = ms.utils.fork_seed(0, n=len(extracted))
    contexts = [
        ms.TuneContext(
            mod=task.dispatched[0],
            target=task.target,
            space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(population_size=population),
            task_name=task.task_name,
            rand_state=seed,
            num_threads=threads,
            logger=_TUNING_LOGGER,  # no console handler: MetaSchedule's own tables stay quiet
        ).clone()
        for task, seed in zip(extracted, seeds, strict=True)
    ]
    with _env("TVM_NUM_THREADS", str(threads)):  # runner workers inherit it
        try:
            ms.tune.tune_tasks(
                tasks=contexts,
                task_weights=[float(t.weight) for t in extracted],
                work_dir=str(work_dir),
                max_trials_global=budget,
                num_trials_per_iter=per_iter,
                builder=ms.builder.LocalBuilder(
                    max_workers=threads, timeout_sec=_BUILD_TIMEOUT_S, f_build=_make_build_fn()
                ),
                runner=ms.runner.LocalRunner(timeout_sec=_RUN_TIMEOUT_S),
                database=ms.database.JSONDatabase(work_dir=str(work_dir)),
            )
        except Exception as exc:
            raise BackendError(
                f"MetaSchedule tuning failed (database {work_dir}): {exc}; delete that folder "
                "to start over, or compile with trials=0"
            ) from exc
    return len(contexts)


@contextlib.contextmanager
def _cpu_tensor_intrinsics() -> Iterator[None]:
    """Register only the CPU tensor intrinsics while tuning, not all of them.

    ``TuneContext`` runs ``import tvm.s_tir.tensor_intrin``, whose ``__init__`` imports every
    family: the CUDA one alone takes ~20 s (~30 s in all, a minute on a busy machine), in
    each process. An LLVM target's schedule rules only look up the x86/ARM/RISC-V ones. So the
    package is put in ``sys.modules`` without running its ``__init__``, the CPU submodules are
    imported, and afterwards the stub is removed again: a later full import (e.g. to tune for
    a GPU) runs the real ``__init__`` and registers the rest.
    """
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    import tvm.s_tir

    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        yield
        return
    stub = importlib.util.module_from_spec(spec)
    sys.modules[name] = stub
    try:
        for family in ("x86", "arm_cpu", "riscv_cpu"):
            importlib.import_module(f"{name}.{family}")
        yield
    finally:
        if sys.modules.get(name) is stub:
            del sys.modules[name]
        if getattr(tvm.s_tir, "tensor_intrin", None) is stub:
            delattr(tvm.s_tir, "tensor_intrin")


def _make_build_fn() -> Callable[[Any, Any, Any], Any]:
    """MetaSchedule's default build, minus ``import tvm.s_tir.tensor_intrin``.

    That import registers every tensor intrinsic and takes ~20-60 s in each fresh builder
    worker, longer than the default 30 s build timeout, so every candidate failed to build.
    Float32 LLVM schedules need no intrinsic at build time (tensorization already happened
    in the search). The function is nested so cloudpickle ships it by value: the worker then
    needs no ``graphopt`` import (and no torch) to run it.
    """

    def build(mod: Any, target: Any, _params: Any) -> Any:
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return build


def _task_flops(task: Any) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(task.dispatched[0]))
    except Exception:  # some TIR (e.g. data-dependent loops) has no static estimate
        return 0.0


def _read_state(work_dir: Path) -> dict[str, Any]:
    path = work_dir / _STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _write_state(work_dir: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically through a temporary file of a unique name.

    Why unique: two runs tuning the same structure share ``work_dir``; with one fixed
    ``.tmp`` name, one run's rename could publish the other's half-written file, or fail
    because the other already renamed it away.
    """
    atomic_write(work_dir / _STATE_FILE, json.dumps(state, indent=2).encode())


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _flatten_outputs(result: Any) -> list[np.ndarray]:
    """The VM returns a tensor or (nested) tuples of them; flatten in order, like pytree."""
    if hasattr(result, "numpy"):
        return [result.numpy()]
    if isinstance(result, (list, tuple)) or type(result).__name__ == "Array":
        return [array for item in result for array in _flatten_outputs(item)]
    raise BackendError(f"TVM VM returned an unexpected {type(result).__name__}")
