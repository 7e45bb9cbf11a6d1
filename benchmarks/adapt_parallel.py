"""Wall time of an ``adapt`` search on the digits task: candidates in process vs as Ray tasks.

    python benchmarks/adapt_parallel.py            # prints the table
    python benchmarks/adapt_parallel.py --write    # also writes its section of RESULTS.md

The search prunes the trained digits ResNet to ``target_macs`` in steps of ``step``, scoring
every candidate by its validation accuracy (``graphopt.tasks.digits:validation_accuracy``,
~1 s per candidate here): the case Ray is for, where scoring dominates. A local runtime of
``--num-cpus`` CPUs is started once (its start is timed apart); a first Ray search warms the
workers up (each imports torch and graphopt once); then sequential and Ray searches alternate
for ``--rounds`` rounds and the table gives their medians. Every search must choose the same
plan (checked). One intra-op thread in the driver and in each task (Ray gives a 1-CPU task
``OMP_NUM_THREADS=1``). Ray runs its workers 15 nice levels below the driver
(``RAY_worker_niceness``): on a host shared with other jobs that starves them (a score took
2-3x as long in a worker as in the driver here), so the benchmark sets it to 0 unless it is
set, and ``--ray-niceness`` overrides it. One run on a shared machine: the ratio matters.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from _results import write_section  # benchmarks/ is sys.path[0] when run as a script

from graphopt.capture import trace
from graphopt.passes.adapt import Adapt
from graphopt.passes.base import PassContext, PassResult
from graphopt.tasks import digits

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## adapt: candidates in process vs as Ray tasks"
NICENESS = "RAY_worker_niceness"  # Ray's config name as the raylet reads it (lower case)


def search(gm, inputs, backend: str, target: float, step: float) -> tuple[float, PassResult]:
    ctx = PassContext(tuple(inputs), extras={"validate": digits.validation_accuracy})
    start = time.perf_counter()
    result = Adapt(target_macs=target, step=step, parallel={"backend": backend}).run(gm, ctx)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write RESULTS.md's section")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--step", type=float, default=0.1)
    parser.add_argument("--ray-niceness", default=os.environ.get(NICENESS, "0"))
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[NICENESS] = str(args.ray_niceness)  # read by the raylet it starts
    torch.set_num_threads(1)
    import ray

    model = digits.trained_model()
    inputs = digits.example_inputs()
    gm = trace(model, inputs)
    start = time.perf_counter()
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="WARNING",
    )
    ray_start = time.perf_counter() - start
    try:
        warm_s, first = search(gm, inputs, "ray", args.target, args.step)
        times: dict[str, list[float]] = {"none": [], "ray": []}
        inside: list[float] = []  # Σ seconds inside the tasks, per Ray search
        for _ in range(args.rounds):
            for backend in ("none", "ray"):
                seconds, result = search(gm, inputs, backend, args.target, args.step)
                if result.stats["plan"] != first.stats["plan"]:
                    raise SystemExit(f"backend {backend} chose another plan than the first search")
                times[backend].append(seconds)
                if backend == "ray":
                    inside.append(result.stats["parallel"][0]["task_seconds"])
    finally:
        ray.shutdown()
    stats = first.stats
    candidates = len(stats["candidates"])
    how = stats["parallel"][0]
    seq, par = statistics.median(times["none"]), statistics.median(times["ray"])
    per_task = statistics.median(inside) / candidates
    slots = int(how["cpus"] // how["task_cpus"])
    overhead = (par * slots - statistics.median(inside)) / candidates
    rows = [
        ("in process (`backend: none`)", seq, f"{seq / candidates:.2f}", "-"),
        (f"Ray tasks, local runtime of {int(how['cpus'])} CPUs", par, f"{per_task:.2f}",
         f"{seq / par:.2f}x"),
        ("Ray, first search (workers start)", warm_s, "-", f"{seq / warm_s:.2f}x"),
        ("Ray runtime start (`ray.init`, once)", ray_start, "-", "-"),
    ]  # fmt: skip
    command = "python benchmarks/adapt_parallel.py --write"
    lines = [
        HEADING,
        "",
        f"`{command}`: `adapt` with `target_macs={args.target}`, `step={args.step}` on the "
        f"trained digits ResNet, every candidate scored by validation accuracy; "
        f"{stats['iterations']} iterations, {candidates} candidates ({how['tasks']} Ray tasks, "
        f"1 CPU each, `RAY_worker_niceness={args.ray_niceness}`), 2 shared vCPUs. Median of "
        f"{args.rounds} interleaved rounds; the same plan in every search (checked).",
        "",
        "| mode | wall s | s per candidate (in process / inside its task) | speed-up |",
        "|---|---|---|---|",
        *[f"| {m} | {w:.1f} | {c} | {s} |" for m, w, c, s in rows],
        "",
        f"Ray overhead per candidate, `(wall × slots − Σ task seconds) / n`: {overhead:.2f} s "
        "(building, packing and sending a candidate, the barrier at the end of each "
        "iteration). A score inside a task taking longer than in process is the host's "
        "other load sharing the cores with both workers. Latency (`target_latency`) is always "
        "measured in the driver with no task running, so Ray speeds up scoring and "
        "fine-tuning only.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(section, HEADING, RESULTS)


if __name__ == "__main__":
    main()
