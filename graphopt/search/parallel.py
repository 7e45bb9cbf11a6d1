"""The adapt search's candidates fine-tuned and scored as Ray tasks, on the sweep's runtime.

NetAdapt's candidates of one iteration (one per prunable group) are independent: each is the
current model cut in one group, fine-tuned briefly if asked, and scored. The search
(``graphopt.search.netadapt``) still proposes and builds them in this process, with the exact
code of the sequential path, then hands each to :class:`RayCandidates`: the candidate travels
as :mod:`graphopt.search.portable` data (``ray.put`` once each), one task per candidate runs
``finetune`` and ``score_fn`` on it, and the metrics come back in the candidates' order. The
search then picks the best exactly as it does sequentially (the same key, the same tie-break:
the first of equal ones), so with deterministic scoring the chosen plan is the same; only the
winner is rebuilt here, its fine-tuned weights (when fine-tuning) fetched from its task.

Why build in the driver and not in the tasks: a candidate's cut needs the graph's shapes,
which live in fake tensors of the capture's ``FakeTensorMode`` that cannot travel; latency
probes need the built model in the driver anyway; and a build (a copy and a surgery, ~0.1 s
on the digits ResNet) is small next to a score (~1 s there). The score and fine-tune
callables with what they hold (the teacher, the data) are put into the object store once
per search, not once per task.

Latency (``target_latency``) is measured here, in the driver, never in a task: tasks that
time a model on a shared host interfere with each other (two tasks on two cores halve each
other's memory bandwidth and steal each other's cores), and NetAdapt's choice hinges on
differences of a few percent between candidates. So with ``target_latency`` the tasks of an
iteration start only once all its latency probes are done (the host is quiet while it is
measured), and with ``target_macs`` each starts as soon as its candidate is built.

Without Ray, or when the callables do not pickle (a lambda over an open file, a generator of
batches), the search runs in process, and the stats' ``note`` says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.fx import GraphModule

from graphopt import distributed
from graphopt.errors import GraphoptError
from graphopt.search.netadapt import Finetune, ScoreFn
from graphopt.search.portable import pack, unpack

__all__ = ["NO_RAY_NOTE", "RayCandidates", "candidate_tasks"]

NO_RAY_NOTE = (
    "ray is not installed: candidates ran one after another in this process "
    "(pip install 'graphopt[ray]' to score them in parallel)"
)


@contextmanager
def candidate_tasks(
    backend: str,
    gm: GraphModule,
    score_fn: ScoreFn,
    finetune: Finetune | None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    task_cpus: float = 1.0,
    hold: bool = False,
) -> Iterator[tuple[RayCandidates | None, dict[str, Any]]]:
    """A runner for the search (None: in process) and how the candidates ran, for the stats.

    ``backend``: ``none`` (in process), ``ray`` (Ray, an error when it is not installed) or
    ``auto`` (Ray when installed). The runtime lives for the ``with`` block: one start per
    search. ``hold``: start an iteration's tasks only when all its candidates are built.
    """
    how: dict[str, Any] = {"mode": "sequential", "backend": backend}
    if backend == "none":
        yield None, how
        return
    ray = distributed.import_ray()
    if ray is None:
        if backend == "ray":
            raise GraphoptError(
                "parallel.backend 'ray' needs Ray: pip install 'graphopt[ray]' (or use "
                "backend: auto, which runs in process without it)"
            )
        yield None, how | {"note": NO_RAY_NOTE}
        return
    reason = _not_portable(ray, gm, score_fn, finetune)
    if reason is not None:
        yield None, how | {"note": f"{reason}: candidates ran one after another in process"}
        return
    with distributed.ray_runtime(ray, address=address, num_cpus=num_cpus) as where:
        runner = RayCandidates(ray, score_fn, finetune, task_cpus=task_cpus, hold=hold)
        how.update(mode="ray", **where, task_cpus=task_cpus, tasks=0, task_seconds=0.0)
        try:
            yield runner, how
        except BaseException:  # an error, Ctrl-C: a runtime started here shuts down (its
            if where["address"] == "existing runtime":  # workers with it); one not ours
                runner.cancel()  # is asked to stop our unfinished tasks
            raise
        how.update(tasks=runner.tasks, task_seconds=round(runner.seconds, 3))


class RayCandidates:
    """Queue candidates with :meth:`add`, collect their metrics with :meth:`metrics`."""

    def __init__(
        self,
        ray: Any,
        score_fn: ScoreFn,
        finetune: Finetune | None,
        *,
        task_cpus: float = 1.0,
        hold: bool = False,
    ) -> None:
        self.ray, self.hold, self.tasks = ray, hold, 0
        self.seconds = 0.0  # spent inside the tasks (fine-tune and score), summed
        self.tuned = finetune is not None
        self.shared = ray.put((score_fn, finetune))  # once per search, shared by every task
        self.task = ray.remote(_evaluate).options(num_cpus=task_cpus, num_returns=2, max_retries=0)
        self.held: list[Any] = []
        self.running: list[tuple[Any, Any]] = []  # (metric, weights) refs, in candidate order
        self.done: list[tuple[Any, Any]] = []

    def add(self, gm: GraphModule) -> None:
        """Send one candidate; its task starts now, or at :meth:`metrics` when holding."""
        packed = self.ray.put(pack(gm))
        if self.hold:
            self.held.append(packed)
        else:
            self._start(packed)

    def metrics(self) -> list[float]:
        """The queued candidates' metrics, in the order they were added; empties the queue."""
        for packed in self.held:
            self._start(packed)
        self.held = []
        self.done, self.running = self.running, []
        try:
            values = self.ray.get([m for m, _ in self.done])
        except Exception as exc:  # a task's error, or a worker that died: let the others
            distributed.drain(self.ray, [m for m, _ in self.done])  # end (never cancel them)
            cause = getattr(exc, "cause", None) or exc  # RayTaskError: what the task raised
            if isinstance(cause, GraphoptError):
                raise cause from exc
            first = (str(cause).strip().splitlines() or [""])[0]
            raise GraphoptError(
                f"a candidate's Ray task failed: {type(cause).__name__}: {first}"
            ) from exc
        self.seconds += sum(seconds for _metric, seconds in values)
        return [float(metric) for metric, _seconds in values]

    def cancel(self) -> None:
        """Stop the tasks not yet finished (their results are no longer wanted)."""
        distributed.stop_unfinished(self.ray, [m for m, _ in [*self.running, *self.done]])
        self.running, self.held = [], []

    def weights(self, index: int) -> dict[str, torch.Tensor] | None:
        """Candidate ``index`` (of the last :meth:`metrics`) after its fine-tune; None if none."""
        return self.ray.get(self.done[index][1]) if self.tuned else None

    def _start(self, packed: Any) -> None:
        self.running.append(tuple(self.task.remote(packed, self.shared)))
        self.tasks += 1


def _evaluate(
    packed: Any, shared: tuple[ScoreFn, Finetune | None]
) -> tuple[tuple[float, float], dict[str, torch.Tensor] | None]:
    """The Ray task: one candidate fine-tuned (if asked) and scored (module-level: by name).

    Returns ``((metric, seconds), weights)``: two objects, so that only the winner's weights
    are ever fetched."""
    start = time.perf_counter()
    score_fn, finetune = shared
    model = unpack(packed)
    if finetune is not None:
        model = finetune(model)
    metric = float(score_fn(model))
    seconds = time.perf_counter() - start
    if finetune is None:
        return (metric, seconds), None
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return (metric, seconds), {name: t.detach() for name, t in tensors}


def _not_portable(ray: Any, gm: GraphModule, score_fn: ScoreFn, finetune: Any) -> str | None:
    """Why the candidates cannot run as tasks (None: they can), checked before Ray starts."""
    try:
        pack(gm)
    except GraphoptError as exc:
        return f"the model cannot be sent to Ray workers ({exc})"
    for what, fn in (("score", score_fn), ("fine-tune", finetune)):
        try:
            ray.cloudpickle.dumps(fn)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            return (
                f"the {what} function cannot be sent to Ray workers ({type(exc).__name__}: {first})"
            )
    return None
