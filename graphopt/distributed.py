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

__all__ = ["import_ray", "ray_runtime"]


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
