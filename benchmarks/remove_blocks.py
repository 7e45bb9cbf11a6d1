"""Benchmark: removing residual blocks vs channel pruning to the same MACs, after recovery.

Not a test: it reports numbers (and whether each meets its aim) and asserts nothing. On a
built-in task (``fashion_mnist``: ResNet-10 layout at width 32, fp32 91.98 %; ``digits``:
the 8×8 digits CNN), with the task's data:

- ``remove_blocks``: ``remove_blocks(target_macs)`` (the least important residual branches by
  output error on calibration data, re-scored after each removal), then ``recover``;
- ``prune``: ``prune(importance l2, target_macs = the MACs remove_blocks reached,
  round_to 8)``, then the same ``recover``, so both keep the same MACs.

The three models (original, blocks removed, channels pruned) are timed on ONNX Runtime at
one intra-op thread, batch 1, round-robin in one loop (``--warmup``, ``--runs``): the
speed-ups are ratios of one interleaved run. Aims (issue 14): within 1.5 pt of fp32 after
recovery at 60 % of the MACs, and at least as fast on ORT as channel pruning to the same MACs.

    python benchmarks/remove_blocks.py --write                 # Fashion-MNIST, RESULTS.md
    python benchmarks/remove_blocks.py --task digits --steps 200

Writes the "Block removal vs channel pruning" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from _results import load_average, write_section  # benchmarks/ is sys.path[0] when run as a script
from _results import say as _say

from graphopt.backends import get_backend
from graphopt.backends.compare import compare_on_backend
from graphopt.passes import get_pass
from graphopt.runner import compress

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Block removal vs channel pruning (same MACs, after recovery)"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.time()
    model, inputs, data, metric = _task(args.task)
    recover = {"steps": args.steps, "lr": 1e-3, "eval_every": max(args.steps // 3, 1)}
    blocks = compress(
        model,
        inputs,
        [get_pass("remove_blocks", target_macs=args.target), get_pass("recover", **recover)],
        data=data,
        name="remove_blocks",
        progress=lambda m: _say(f"remove_blocks: {m}"),
    )
    reached = blocks.report.compressed.macs / blocks.report.original.macs
    pruned = compress(
        model,
        inputs,
        [
            get_pass("prune", importance="l2", target_macs=reached, round_to=8),
            get_pass("recover", **recover),
        ],
        data=data,
        name="prune",
        progress=lambda m: _say(f"prune: {m}"),
    )
    _say("timing the three models on ONNX Runtime, interleaved")
    comparison = compare_on_backend(
        get_backend("onnxruntime", intra_op_threads=1),
        {
            "original": blocks.original,
            "remove_blocks": blocks.compressed,
            "prune": pruned.compressed,
        },
        inputs,
        warmup=args.warmup,
        runs=args.runs,
    )
    rows = [
        _row(name, run, metric, comparison)
        for name, run in (("remove_blocks", blocks), ("prune", pruned))
    ]
    removed = blocks.report.stages[1].stats.get("removed", [])
    text = _table(rows, comparison, removed, args.target)
    print(text)
    if args.write:
        argv = sys.argv[1:] if argv is None else argv
        write_section(_section(args, argv, text, time.time() - started), SECTION, RESULTS)
        _say(f"wrote the {SECTION[3:]} section of {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fashion_mnist", "digits"], default="fashion_mnist")
    parser.add_argument("--target", type=float, default=0.6, help="fraction of MACs to keep")
    parser.add_argument("--steps", type=int, default=600, help="recovery steps")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (training)")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    return parser.parse_args(argv)


def _task(name: str) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...], Any, str]:
    if name == "fashion_mnist":
        from graphopt.tasks import fashion_mnist as task
    else:
        from graphopt.tasks import digits as task
    return task.trained_model(), task.example_inputs(), task.data(), "accuracy"


def _row(name: str, run: Any, metric: str, comparison: Any) -> dict[str, Any]:
    report = run.report
    before = report.task_metric["original"][metric]
    after = report.task_metric["compressed"][metric]
    result = comparison.results[name]
    return {
        "method": name,
        "passes": " → ".join(s.name for s in report.stages[1:]),
        "before": before,
        "after": after,
        "drop": before - after,
        "macs_kept": report.compressed.macs / report.original.macs,
        "params_m": report.compressed.params / 1e6,
        "ms": result.latency.median_ms,
        "speedup": comparison.results["original"].latency.median_ms / result.latency.median_ms,
        "max_rel_diff": result.max_rel_diff,
        "stages": [(s.name, (s.task_metric or {}).get(metric)) for s in report.stages],
    }


def _table(rows: list[dict[str, Any]], comparison: Any, removed: list[str], target: float) -> str:
    original_ms = comparison.results["original"].latency.median_ms
    lines = [
        "| method | passes | accuracy original → compressed | drop (pt) | MACs kept | params (M) "
        "| ORT ms (original " + f"{original_ms:.3f})" + " | ORT speed-up | ORT vs torch |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['passes']} | {row['before']:.2f} → {row['after']:.2f} "
            f"| {row['drop']:.2f} | {row['macs_kept']:.3f} | {row['params_m']:.3f} "
            f"| {row['ms']:.3f} | {row['speedup']:.2f} | {row['max_rel_diff']:.1e} |"
        )
    blocks, prune = rows
    faster = blocks["ms"] / prune["ms"]
    lines += [
        "",
        f"Blocks removed: {', '.join(removed) or 'none'}.",
        "",
        "Aims: "
        + f"within 1.5 pt at {target:.0%} MACs: "
        + ("met" if blocks["drop"] <= 1.5 else f"MISSED by {blocks['drop'] - 1.5:.2f} pt")
        + "; at least as fast as channel pruning to the same MACs: "
        + (
            f"met ({1 / faster:.2f}× channel pruning's speed)"
            if faster <= 1.0
            else f"MISSED (channel pruning is {faster:.2f}× faster)"
        )
        + ".",
        "",
        "Task metric after each stage: "
        + "; ".join(
            f"{row['method']}: "
            + ", ".join(f"{s} {'–' if v is None else f'{v:.2f}'}" for s, v in row["stages"])
            for row in rows
        ),
    ]
    return "\n".join(lines)


def _section(args: argparse.Namespace, argv: list[str], table: str, seconds: float) -> str:
    from graphopt.provenance import machine

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/remove_blocks.py " + shlex.join(argv)
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command.strip()}` ({stamp}, {seconds / 60:.0f} min)  ",
            f"Task {args.task}; machine: {machine()['cpu']}, {os.cpu_count()} logical cores, "
            f"torch threads {args.threads}, load average at the end "
            f"{load_average()}; {platform.system()} {platform.machine()}  ",
            f"ONNX Runtime with 1 intra-op thread, batch 1, the three models timed interleaved "
            f"(warmup {args.warmup}, {args.runs} runs); recovery {args.steps} steps of "
            "distillation, checkpoint chosen on validation data; accuracy on the test data.",
            "",
            table,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
