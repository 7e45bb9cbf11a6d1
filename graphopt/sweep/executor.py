"""Run a sweep's variants: cached on disk, as Ray tasks, or one after another without Ray.

The cache: ``<cache root>/<variant key>/`` holds a finished variant's files (``report.json``,
``model.pt2``, ``model.onnx``, ``graphopt.log``…) and ``variant.json`` (status, error,
seconds). It is written under a temporary name and renamed last, so an interrupted sweep leaves
only whole entries: run it again and it resumes; a repeated sweep runs nothing. The root is
``sweep.cache_dir`` (or ``--cache-dir``), else ``$XDG_CACHE_HOME/graphopt/sweep`` like TVM's
tuning databases: a variant two sweeps share is run once.

Ray: ``graphopt.distributed.ray_runtime`` starts a local runtime (``num_cpus`` of them, default
all cores) unless an address is given (``--address``, ``sweep.address``, or Ray's own
``RAY_ADDRESS``); each variant is one task reserving ``sweep.resources`` (Ray sets its
``OMP_NUM_THREADS`` to its CPUs). A runtime that is already initialised (a notebook, a test) is
used and left running. Without Ray installed, variants run one after another in this process,
with a one-line note.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphopt.distributed import import_ray, ray_runtime, stop_unfinished
from graphopt.sweep.spec import SweepOptions
from graphopt.sweep.variants import Variant
from graphopt.sweep.worker import run_variant

__all__ = ["Cache", "VariantResult", "default_cache_root", "import_ray", "run_variants"]

_RESULT = "variant.json"
NO_RAY_NOTE = (
    "ray is not installed: running {n} variant(s) one after another in this process "
    "(pip install 'graphopt[ray]' to run them in parallel)"
)


def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/graphopt/sweep`` (``~/.cache/graphopt/sweep`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "graphopt" / "sweep"


@dataclass(frozen=True)
class VariantResult:
    """A variant's outcome: its status, the error line, its report (``report.json``) and files."""

    variant: Variant
    status: str  # ok | failed | error
    error: str | None
    seconds: float
    cached: bool
    folder: Path | None  # the cache entry; None for a failure (never cached)
    report: dict[str, Any] | None


class Cache:
    """Finished variants by key, one folder each (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def load(self, variant: Variant) -> VariantResult | None:
        folder = self.root / variant.key
        try:
            meta = json.loads((folder / _RESULT).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return _result(variant, meta, folder, cached=True)

    def store(self, variant: Variant, outcome: dict[str, Any]) -> VariantResult:
        """Write an outcome of :func:`run_variant`; a failure is returned, not cached.

        Why failures are not cached: many are the environment's (a module not on the path, a
        missing dataset, a killed worker), and the next sweep should try again once fixed;
        they also fail fast. Only a finished variant, with its report, costs nothing twice.
        """
        meta = {k: v for k, v in outcome.items() if k != "files"}
        meta.update(name=variant.name, assignments=variant.assignments, key=variant.key)
        if outcome["status"] != "ok":
            report = _report_from(outcome["files"])
            return _result(variant, meta, None, cached=False, report=report)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{variant.key[:16]}.", dir=self.root))
        try:
            for name, data in outcome["files"].items():
                (staging / name).write_bytes(data)
            (staging / _RESULT).write_text(json.dumps(meta, indent=1, default=str))
            final = self.root / variant.key
            if final.exists():  # another sweep finished it meanwhile: same recipe, same result
                shutil.rmtree(staging)
            else:
                os.replace(staging, final)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return _result(variant, meta, final, cached=False)


def _result(
    variant: Variant,
    meta: dict[str, Any],
    folder: Path | None,
    *,
    cached: bool,
    report: dict[str, Any] | None = None,
) -> VariantResult:
    if report is None and folder is not None and meta.get("status") == "ok":
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            report = None
    return VariantResult(
        variant,
        str(meta.get("status")),
        meta.get("error"),
        float(meta.get("seconds") or 0.0),
        cached,
        folder,
        report,
    )


def _report_from(files: dict[str, bytes]) -> dict[str, Any] | None:
    try:
        return json.loads(files["report.json"])
    except (KeyError, ValueError):
        return None


def run_variants(
    variants: Sequence[Variant],
    options: SweepOptions,
    cache: Cache,
    *,
    say: Callable[[str], None],
    note: Callable[[str], None],
    address: str | None = None,
    use_ray: bool = True,
) -> tuple[list[VariantResult], dict[str, Any]]:
    """Every variant's result (cached ones read back), in the variants' order, and how the
    sweep ran (``mode``, ``address``, ``cpus``)."""
    done: dict[str, VariantResult] = {}
    for variant in variants:
        hit = cache.load(variant)
        if hit is not None:
            done[variant.key] = hit
    todo = [v for v in variants if v.key not in done]
    tally = _Tally(len(variants), say)
    tally.update(done.values(), running=0)
    ray = import_ray() if use_ray and todo else None
    if not todo:
        how: dict[str, Any] = {"mode": "cached"}
    elif ray is None:
        if use_ray:
            note(NO_RAY_NOTE.format(n=len(todo)))
        how = {"mode": "sequential"}
        for variant in todo:
            tally.update(done.values(), running=1)
            done[variant.key] = cache.store(variant, run_variant(variant.recipe))
        tally.update(done.values(), running=0)
    else:
        how = _run_on_ray(ray, todo, options, cache, done, tally, address)
    return [done[v.key] for v in variants], how


def _run_on_ray(
    ray: Any,
    todo: Sequence[Variant],
    options: SweepOptions,
    cache: Cache,
    done: dict[str, VariantResult],
    tally: _Tally,
    address: str | None,
) -> dict[str, Any]:
    with ray_runtime(ray, address=address or options.address, num_cpus=options.num_cpus) as where:
        cpus = where["cpus"]
        resources = options.resources
        task = ray.remote(_ray_task).options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            memory=resources.memory_mb * 2**20 if resources.memory_mb else None,
            max_retries=0,
        )
        slots = max(1, int(cpus // resources.num_cpus))
        pending = {task.remote(v.recipe): v for v in todo}
        try:
            while pending:
                tally.update(done.values(), running=min(slots, len(pending)))
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    variant = pending.pop(ref)
                    done[variant.key] = cache.store(variant, _get(ray, ref))
        except BaseException:  # Ctrl-C, SIGTERM: finished ones are cached; a runtime started
            if where["address"] == "existing runtime":  # here shuts down with its workers,
                stop_unfinished(ray, list(pending))  # one not ours is asked to stop ours
            raise
        tally.update(done.values(), running=0)
        return {"mode": "ray", **where}


def _ray_task(recipe: Any) -> dict[str, Any]:
    """The Ray task: a variant in a worker process (module-level so Ray ships it by name)."""
    return run_variant(recipe)


def _get(ray: Any, ref: Any) -> dict[str, Any]:
    """The task's outcome; a worker that died or a Ray failure becomes an ``error`` result."""
    try:
        return ray.get(ref)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return {
            "status": "error",
            "error": f"ray: {type(exc).__name__}: {first}",
            "seconds": 0.0,
            "files": {},
        }


class _Tally:
    """The progress line: ``sweep: 3/6 done, 2 running, 1 failed (1 cached)``."""

    def __init__(self, total: int, say: Callable[[str], None]) -> None:
        self.total, self.say, self.started = total, say, time.monotonic()

    def update(self, results: Any, *, running: int) -> None:
        results = list(results)
        failed = sum(r.status != "ok" for r in results)
        cached = sum(r.cached for r in results)
        self.say(
            f"sweep: {len(results)}/{self.total} done, {running} running, {failed} failed"
            + (f" ({cached} cached)" if cached else "")
        )
