"""``adapt`` with ``parallel``: candidates scored as Ray tasks choose what the sequential search
chooses; what cannot travel, or a missing Ray, runs in process with a note.

One local Ray runtime (2 CPUs) serves the tests that need it: starting one costs ~15 s here.
The model is the zoo's ResNet-18 at 32×32 (about ten prunable groups per iteration), scored by
output fidelity (the default) or a short distillation on seeded batches: both deterministic
at one thread, which Ray gives a 1-CPU task as the test session has.
"""

from __future__ import annotations

import copy
import os
import pickle
import threading
from collections.abc import Iterator

import pytest
import torch

from graphopt import distributed
from graphopt.errors import PassError
from graphopt.passes.adapt import Adapt
from graphopt.passes.base import PassContext
from graphopt.pruning import PruningPlan, apply_plan
from graphopt.search.parallel import NO_RAY_NOTE
from graphopt.search.portable import pack, unpack
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace
from tests.search.fakes import FakeLatency

ray = pytest.importorskip("ray")

MACS = {"target_macs": 0.8, "step": 0.1}


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def resnet() -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...]]:
    _, gm, inputs = zoo_trace("resnet18")
    return gm, inputs


def _adapt(gm, inputs, extras=None, **options):
    return Adapt(**options).run(gm, PassContext(tuple(inputs), extras=dict(extras or {})))


def _same_search(a, b) -> None:
    """The same plan, trace and candidates (every metric equal), and the same weights."""
    assert a.stats["plan"] == b.stats["plan"] and a.stats["plan"]["groups"]
    assert a.stats["trace"] == b.stats["trace"]
    assert a.stats["candidates"] == b.stats["candidates"]
    for (name, p), (_, q) in zip(
        a.graph_module.state_dict().items(), b.graph_module.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name


def test_ray_tasks_choose_the_plan_the_sequential_search_chooses(ray_runtime, resnet) -> None:
    gm, inputs = resnet
    in_process = _adapt(gm, inputs, **MACS)
    on_ray = _adapt(gm, inputs, **MACS, parallel={"backend": "ray"})
    assert in_process.stats["parallel"][0] == {"mode": "sequential", "backend": "none"}
    how = on_ray.stats["parallel"][0]
    assert how["mode"] == "ray" and how["cpus"] == 2 and how["address"] == "existing runtime"
    assert how["tasks"] == len(on_ray.stats["candidates"]) > len(on_ray.stats["trace"]) >= 2
    assert how["task_seconds"] > 0
    assert on_ray.stats["budget_met"] and on_ray.modified
    _same_search(in_process, on_ray)


def _nudge(student, teacher, train, *, steps, progress):
    """A stand-in for ``graphopt.recovery.distill`` whose effect is known: every parameter
    grows by 0.01 per step (module-level, so Ray workers import it by name)."""
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * steps)
    return student, None


def test_fine_tuned_winners_bring_their_weights_back_from_their_task(
    ray_runtime, monkeypatch
) -> None:
    monkeypatch.setattr("graphopt.recovery.distill", _nudge)
    _, gm, inputs = small_trace(models.ConvChain)
    options = {"target_macs": 0.5, "round_to": 4, "short_finetune_steps": 2}
    extras = {"train": [(inputs[0], None)]}
    in_process = _adapt(gm, inputs, extras, **options)
    on_ray = _adapt(gm, inputs, extras, **options, parallel={"backend": "auto"})
    assert on_ray.stats["parallel"][0]["mode"] == "ray"
    _same_search(in_process, on_ray)
    # Each iteration fine-tunes the last winner's weights once more: the result is the plan
    # replayed on the original, plus one nudge per iteration.
    replayed = apply_plan(copy.deepcopy(gm), PruningPlan.from_dict(on_ray.stats["plan"]))
    nudged = 0.02 * on_ray.stats["iterations"]
    tuned = dict(on_ray.graph_module.named_parameters())
    for name, p in replayed.named_parameters():
        torch.testing.assert_close(tuned[name], p + nudged)


def test_the_real_distill_runs_in_tasks_as_in_process(ray_runtime) -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    gen = torch.Generator().manual_seed(2)
    train = [(torch.randn(2, 3, 8, 8, generator=gen), None) for _ in range(3)]
    options = {"target_macs": 0.5, "round_to": 4, "short_finetune_steps": 2}
    in_process = _adapt(gm, inputs, {"train": train}, **options)
    on_ray = _adapt(gm, inputs, {"train": train}, **options, parallel={"backend": "ray"})
    assert on_ray.stats["parallel"][0]["mode"] == "ray"
    assert "distill" in on_ray.stats["finetune"]
    _same_search(in_process, on_ray)
    replayed = apply_plan(copy.deepcopy(gm), PruningPlan.from_dict(on_ray.stats["plan"]))
    tuned = dict(on_ray.graph_module.named_parameters())
    assert all(not torch.equal(tuned[k], p) for k, p in replayed.named_parameters())  # trained


def test_latency_is_measured_in_the_driver_and_each_configuration_once(ray_runtime) -> None:
    _, gm, inputs = small_trace(models.ConvChain)
    options = {"target_latency": 0.6, "step": 0.2, "round_to": 4}
    runs = []
    for parallel in ({"backend": "none"}, {"backend": "ray"}):
        latency = FakeLatency()
        result = _adapt(gm, inputs, {"latency": latency}, **options, parallel=parallel)
        runs.append((result, latency))
    (in_process, seq_latency), (on_ray, ray_latency) = runs
    _same_search(in_process, on_ray)
    assert ray_latency.calls == seq_latency.calls  # same probes, here, in the same order
    assert on_ray.stats["latency_measurements"] == len(set(ray_latency.calls))


def test_a_score_that_fails_in_a_task_is_a_pass_error_naming_why(ray_runtime, monkeypatch) -> None:
    """The other tasks are left to finish, never cancelled: ``ray.cancel`` racing a finishing
    task aborts the driver in Ray 2.60 (ray-project/ray#54846; it killed a CI run)."""
    cancelled: list[object] = []
    monkeypatch.setattr(ray, "cancel", lambda ref, **kw: cancelled.append(ref))
    _, gm, inputs = small_trace(models.ConvChain)
    driver = os.getpid()

    def evaluate(model) -> float:
        if os.getpid() != driver:
            raise ValueError("boom in a worker")
        return 1.0

    with pytest.raises(PassError, match=r"\[adapt\].*ValueError: boom in a worker"):
        _adapt(gm, inputs, {"evaluate": evaluate}, target_macs=0.5, round_to=4,
               parallel={"backend": "ray"})  # fmt: skip
    assert cancelled == []


def test_a_score_that_does_not_pickle_runs_in_process_with_a_note(resnet) -> None:
    gm, inputs = resnet
    lock = threading.Lock()

    def evaluate(model) -> float:
        with lock:
            return float(model(*inputs).detach().abs().sum())

    result = _adapt(gm, inputs, {"evaluate": evaluate}, target_macs=0.9, step=0.1)
    assert result.stats["parallel"][0]["mode"] == "sequential"  # the default: no note
    assert "note" not in result.stats["parallel"][0]
    result = _adapt(gm, inputs, {"evaluate": evaluate}, target_macs=0.9, step=0.1,
                    parallel={"backend": "ray"})  # fmt: skip
    how = result.stats["parallel"][0]
    assert how["mode"] == "sequential" and result.stats["budget_met"]
    assert "score function cannot be sent to Ray workers" in how["note"]
    assert "lock" in how["note"] and "\n" not in how["note"]


def test_without_ray_auto_runs_in_process_and_ray_is_an_error(monkeypatch, resnet) -> None:
    gm, inputs = resnet
    monkeypatch.setattr(distributed, "import_ray", lambda: None)
    result = _adapt(gm, inputs, target_macs=0.9, step=0.1, parallel={"backend": "auto"})
    assert result.stats["parallel"][0] == {
        "mode": "sequential",
        "backend": "auto",
        "note": NO_RAY_NOTE,
    }
    with pytest.raises(PassError, match=r"\[adapt\].*pip install 'graphopt\[ray\]'"):
        _adapt(gm, inputs, target_macs=0.9, parallel={"backend": "ray"})


@pytest.mark.parametrize(
    ("parallel", "option"),
    [
        ({"backend": "dask"}, "parallel.backend"),
        ({"backend": "ray", "num_cpus": 0}, "parallel.num_cpus"),
        ({"backend": "ray", "task_cpus": 0}, "parallel.task_cpus"),
        ({"backend": "ray", "cores": 2}, "cores"),
    ],
)
def test_bad_parallel_options_are_refused_by_name(parallel, option) -> None:
    with pytest.raises(ValueError, match=option):
        Adapt(target_macs=0.5, parallel=parallel)


@pytest.mark.parametrize("name", ["resnet18", "transformer"])
def test_a_packed_graph_computes_what_the_original_does(name) -> None:
    _, gm, inputs = zoo_trace(name)
    packed = unpack(pickle.loads(pickle.dumps(pack(gm))))
    names = [n.name for n in gm.graph.nodes if n.op != "call_module"]  # less the input guard
    assert packed is not gm and [n.name for n in packed.graph.nodes] == names
    with torch.no_grad():
        torch.testing.assert_close(packed(*inputs), gm(*inputs), rtol=0, atol=0)
    flags = {k: p.requires_grad for k, p in gm.named_parameters()}
    assert {k: p.requires_grad for k, p in packed.named_parameters()} == flags
