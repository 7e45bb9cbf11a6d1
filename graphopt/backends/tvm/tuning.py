"""MetaSchedule tuning for the TVM backend, with its database cached on disk.

Why tuning is part of the backend and not an afterthought: TVM 0.27's default CPU pipeline
legalizes every op to plain TIR loops and schedules none of them, so an untuned conv or matmul
runs as naive scalar loops (orders of magnitude slower than ONNX Runtime).

With ``trials``: ``extract_tasks`` → ``tune_tasks`` into a JSON database on disk, then
``MetaScheduleApplyDatabase`` and weight pre-packing (``apply_database``). The database lives
in ``<cache root>/<key>/`` where the key (``cache_key``) hashes the Relax module's text
(parameters are constants and not printed, so only the structure counts) with the target and
the TVM version. A later compile of the same structure on the same target finds the database
and runs no new trial; ``graphopt_tuning.json`` in that folder records the budget spent.

A workaround for this environment, explained where it lives: MetaSchedule imports
``tvm.s_tir.tensor_intrin`` (20-60 s, mostly CUDA intrinsics) in the tuning process and in
every builder worker, where it outlasted the 30 s build timeout so that every candidate
failed; we register only the CPU intrinsics (``_cpu_tensor_intrinsics``) and build without
the import (``_make_build_fn``).
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graphopt.backends.tvm.runtime import INSTALL_HINT
from graphopt.cache import atomic_write
from graphopt.errors import BackendError, BackendUnavailableError

__all__ = [
    "apply_database",
    "cache_key",
    "check_tuning_dependencies",
    "default_cache_root",
    "tune_cached",
]

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


def check_tuning_dependencies() -> None:
    """MetaSchedule imports these only mid-tuning; failing there would waste the work so far."""
    missing = [
        m for m in ("psutil", "xgboost", "cloudpickle") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise BackendUnavailableError(
            f"TVM tuning (trials > 0) needs {', '.join(missing)}, not installed; install them "
            f"with: {INSTALL_HINT} (or compile with trials=0)"
        )


def cache_key(tvm: Any, mod: Any, target: Any) -> str:
    """Hash of the module's structure (constants are not printed) + target + TVM version."""
    digest = hashlib.sha256()
    for part in (_KEY_SCHEMA, tvm.__version__, str(target), mod.script(show_meta=False)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:20]


def tune_cached(
    tvm: Any,
    prepared: Any,
    target: Any,
    work_dir: Path,
    trials: int,
    threads: int,
    *,
    rpc: Any = None,
) -> dict[str, Any]:
    """Tune only the part of the budget the database in ``work_dir`` has not yet spent.

    ``graphopt_tuning.json`` records the budget a finished tuning run covered; it is written
    last, so an interrupted run is tuned again (its records stay and seed the search). With
    ``rpc`` (``graphopt.backends.tvm.rpc.RPCOptions``) candidates run on the remote device.
    """
    from tvm.s_tir import meta_schedule as ms

    work_dir.mkdir(parents=True, exist_ok=True)
    state = _read_state(work_dir)
    done = int(state.get("trials", 0))
    records_before = len(ms.database.JSONDatabase(work_dir=str(work_dir)))
    info: dict[str, Any] = {"tuned": True, "trials": trials, "database": str(work_dir)}
    if done >= trials and records_before > 0:
        return {**info, "reused_database": True, "new_trials": 0, "records": records_before}
    tasks = _run_tuning(ms, prepared, target, work_dir, trials - done, threads, rpc)
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


def apply_database(tvm: Any, relax: Any, prepared: Any, target: Any, work_dir: Path) -> Any:
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


def _run_tuning(
    ms: Any, prepared: Any, target: Any, work_dir: Path, budget: int, threads: int, rpc: Any
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
        return _tune_tasks(ms, extracted, work_dir, budget, threads, rpc)


def _tune_tasks(
    ms: Any, extracted: list[Any], work_dir: Path, budget: int, threads: int, rpc: Any = None
) -> int:
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
                runner=_runner(ms, rpc),
                database=ms.database.JSONDatabase(work_dir=str(work_dir)),
            )
        except Exception as exc:
            raise BackendError(
                f"MetaSchedule tuning failed (database {work_dir}): {exc}; delete that folder "
                "to start over, or compile with trials=0"
            ) from exc
    return len(contexts)


def _runner(ms: Any, rpc: Any) -> Any:
    """Where candidates are timed: this machine, or the remote device of ``rpc``."""
    if rpc is None:
        return ms.runner.LocalRunner(timeout_sec=_RUN_TIMEOUT_S)
    from graphopt.backends.tvm.rpc import tuning_runner

    return tuning_runner(ms, rpc, _RUN_TIMEOUT_S)


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
