"""Benchmark: does a pruned model's speed-up on ONNX Runtime carry over to tuned TVM?

Not a test: it reports numbers, it asserts nothing about them. ResNet-18 from
``graphopt.zoo`` (random seeded weights), 1x3x224x224: the original and the model that
``PruneChannels(target_macs=0.5, round_to=16)`` makes of it (L2 importance, the pass's
default selection) are compiled on the ``tvm`` backend with MetaSchedule tuning
(``--trials``, 64 by default: the budget of ``make demo``; each model gets its own tuning,
cached under ``~/.cache/graphopt/tvm/``) and on ONNX Runtime for reference, then timed
interleaved in one loop per backend (``compare_on_backend``), ``--rounds`` times, each round
compiling afresh (TVM recompiles from its cached database). The speed-up is the median over
rounds of original median / pruned median; absolute times on this shared machine are noise.

    python benchmarks/pruning_tvm.py                 # writes its section of RESULTS.md
    python benchmarks/pruning_tvm.py --trials 0 --no-write

Writes the "Pruned ResNet-18 on TVM" section of ``benchmarks/RESULTS.md`` (other sections
are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from _results import write_section  # benchmarks/ is sys.path[0] when run as a script

from graphopt.analysis import analyze
from graphopt.backends import get_backend
from graphopt.backends.compare import compare_on_backend
from graphopt.capture import trace
from graphopt.ir import propagate_shapes
from graphopt.passes.base import PassContext
from graphopt.passes.prune_channels import PruneChannels
from graphopt.zoo import get_model

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Pruned ResNet-18 on TVM"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    model, inputs = get_model(args.model, seed=0, input_shape=(1, 3, 224, 224))
    gm = trace(model, inputs)
    base = analyze(gm)
    PruneChannels(target_macs=args.target_macs, round_to=args.round_to).run(gm, PassContext(inputs))
    gm.recompile()
    propagate_shapes(gm, inputs)
    pruned = analyze(gm)
    models = {"original": model, "pruned": gm}
    rows = []
    for name, backend in (
        ("onnxruntime", get_backend("onnxruntime", intra_op_threads=args.threads)),
        ("tvm", get_backend("tvm", trials=args.trials, threads=args.threads)),
    ):
        rounds = []
        for k in range(args.rounds):
            print(f"{name}: round {k + 1}", file=sys.stderr)
            started = time.perf_counter()
            comparison = compare_on_backend(
                backend, models, inputs, warmup=args.warmup, runs=args.runs
            )
            rounds.append((comparison, time.perf_counter() - started))
        rows.append(_row(name, rounds))
    text = _table(args, base, pruned, rows)
    print(text)
    if not args.no_write:
        argv = sys.argv[1:] if argv is None else argv
        write_section(_section(args, argv, text), SECTION, RESULTS)
        print(f"wrote the {SECTION[3:]} section of {RESULTS}", file=sys.stderr)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument("--trials", type=int, default=64, help="MetaSchedule trials per model")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads, both backends")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    return parser.parse_args(argv)


def _row(backend: str, rounds: list) -> dict[str, Any]:
    speedups = [c.results["pruned"].speedup for c, _ in rounds]
    first = rounds[0][0]
    return {
        "backend": backend,
        "original_ms": statistics.median(
            c.results["original"].latency.median_ms for c, _ in rounds
        ),
        "pruned_ms": statistics.median(c.results["pruned"].latency.median_ms for c, _ in rounds),
        "speedup": statistics.median(speedups),
        "range": (min(speedups), max(speedups)),
        "diff": max(c.results[m].max_rel_diff for c, _ in rounds for m in ("original", "pruned")),
        "seconds": [s for _, s in rounds],
        "tuned": {m: first.results[m].info.get("tuned") for m in ("original", "pruned")},
    }


def _table(args: argparse.Namespace, base, pruned, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{args.model}: MACs {base.macs / 1e9:.3f} G → {pruned.macs / 1e9:.3f} G "
        f"({pruned.macs / base.macs:.1%}), params {base.params / 1e6:.2f} M → "
        f"{pruned.params / 1e6:.2f} M ({pruned.params / base.params:.1%})",
        "",
        "| backend | original median ms | pruned median ms | speed-up (range over rounds) "
        "| max rel. diff vs eager | round wall s (compile + timing) | tuned |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lo, hi = r["range"]
        tuned = ", ".join(f"{m} {t}" for m, t in r["tuned"].items() if t is not None) or "–"
        lines.append(
            f"| {r['backend']} | {r['original_ms']:.2f} | {r['pruned_ms']:.2f} | "
            f"{r['speedup']:.2f} ({lo:.2f}–{hi:.2f}) | {r['diff']:.0e} | "
            f"{', '.join(f'{s:.0f}' for s in r['seconds'])} | {tuned} |"
        )
    return "\n".join(lines)


def _section(args: argparse.Namespace, argv: list[str], table: str) -> str:
    command = "python benchmarks/pruning_tvm.py " + " ".join(shlex.quote(a) for a in argv)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command.strip()}` ({when})  ",
            f"Machine: {os.cpu_count()} logical cores, load average at the end {load}; "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}, "
            f"torch {torch.__version__}  ",
            f"`PruneChannels(target_macs={args.target_macs}, round_to={args.round_to})` (L2, "
            f"default selection) on seeded random weights, batch 1 3x224x224; TVM tuned with "
            f"{args.trials} MetaSchedule trials per model (databases cached, so later rounds "
            f"only recompile), {args.threads} runtime thread(s) on both backends; {args.rounds} "
            f"rounds of warmup {args.warmup} and {args.runs} runs, original and pruned timed "
            "interleaved in one loop per backend.",
            "",
            table,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
