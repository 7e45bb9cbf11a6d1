"""The Ray runtime that ``graphopt sweep`` and the ``adapt`` search run their tasks on.

One place decides how a runtime is found or started, so a sweep and a search behave alike:
a runtime that is already initialised (a notebook, a test, a sweep's worker) is used and left
running; otherwise ``ray.init`` connects to ``address`` (else Ray's own ``RAY_ADDRESS``) or
starts a local runtime of ``num_cpus`` CPUs (default: all cores), and shuts it down after.
Ray is optional (``pip install 'graphopt[ray]'``): :func:`import_ray` says whether it is there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["drain", "import_ray", "ray_runtime", "stop_unfinished"]


def import_ray() -> Any | None:
    """The ``ray`` module, or None when it is not installed (a broken install still raises)."""
    try:
        import ray
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        return None
    return ray


@contextmanager
def ray_runtime(
    ray: Any, *, address: str | None = None, num_cpus: int | None = None
) -> Iterator[dict[str, Any]]:
    """A usable runtime for the ``with`` block; yields ``{address, cpus, ray}`` to report.

    ``address`` is ``"local"`` for a runtime started here, the cluster's address, or
    ``"existing runtime"``; ``cpus`` counts the cluster's CPUs (what bounds parallel tasks).
    """
    started_here = not ray.is_initialized()
    if started_here:
        address = address or os.environ.get("RAY_ADDRESS") or None
        local = {} if address else {"num_cpus": num_cpus}
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="WARNING",
            **local,
        )
    try:
        where = (address or "local") if started_here else "existing runtime"
        cpus = float(ray.cluster_resources().get("CPU", 1))
        yield {"address": where, "cpus": cpus, "ray": ray.__version__}
    finally:
        if started_here:
            ray.shutdown()


def drain(ray: Any, refs: list[Any]) -> None:
    """Wait for ``refs`` to finish, whatever their outcome (their results are not wanted).

    Used instead of cancelling after a task failed: Ray 2.60 aborts the driver process (a
    ``RAY_CHECK`` in ``TaskManager::CompletePendingTask``, "Tried to complete task that was
    not pending") when ``ray.cancel`` races with the reply of a task finishing at that moment,
    ray-project/ray#54846. It killed a CI run here. Letting an iteration's other candidates
    finish costs at most one task's time, and never the user's process.
    """
    if refs:
        ray.wait(list(refs), num_returns=len(refs), timeout=None, fetch_local=False)


def stop_unfinished(ray: Any, refs: list[Any]) -> None:
    """Cancel those of ``refs`` not yet finished (on Ctrl-C, when the runtime outlives us).

    Finished tasks are never cancelled (that is the race :func:`drain` explains); a task
    finishing between the check and the cancel can still hit it, a window of microseconds
    instead of a whole iteration. Not forced: a forced cancel kills the worker process.
    """
    if not refs:
        return
    _ready, unfinished = ray.wait(list(refs), num_returns=len(refs), timeout=0, fetch_local=False)
    for ref in unfinished:
        ray.cancel(ref, force=False)
