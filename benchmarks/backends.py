"""Benchmark: zoo models on torch eager vs ONNX Runtime vs TVM, timed interleaved.

Not a test: it reports numbers, it asserts nothing about them. Each model is traced once and
compiled on every backend; the compiled models then run round-robin in one loop (see
``graphopt.backends.compare``), so the speed-up column is the number to trust on a noisy
machine. GFLOP/s counts 2 FLOPs per multiply-accumulate (``graphopt.analysis``) over the
median latency. A backend that is unavailable or fails (typically TVM) is skipped with its
reason in the notes, and the others are still compared.

    python benchmarks/backends.py                       # resnet50, mobilenet_v2; torch, ort, tvm
    python benchmarks/backends.py --backends torch,onnxruntime --runs 100
    python benchmarks/backends.py --tvm-trials 200      # MetaSchedule tuning (slow)

Writes the "Backends" section of ``benchmarks/RESULTS.md`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _results import write_section  # benchmarks/ is sys.path[0] when run as a script

from graphopt.analysis import analyze
from graphopt.backends import get_backend
from graphopt.backends.compare import BackendComparison, bench_backends
from graphopt.capture import trace
from graphopt.zoo import get_model

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Backends"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    load_at_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    for name in args.models:
        model, inputs = get_model(name, seed=0, input_shape=(args.batch, 3, 224, 224))
        gm = trace(model, inputs)
        macs = analyze(gm).macs * args.batch  # analyze counts per sample
        for threads in args.threads:
            backends = [_backend(b, args, threads) for b in args.backends]
            print(
                f"{name}, threads {threads or 'default'}: compiling on "
                f"{', '.join(b.name for b in backends)}",
                file=sys.stderr,
            )
            started = time.perf_counter()
            comparison = bench_backends(
                gm, inputs, backends, warmup=args.warmup, runs=args.runs, skip_failures=True
            )
            print(f"  done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            rows += _rows(name, threads, macs, comparison)
    table = _markdown_table(rows)
    print(table)
    if not args.no_write:
        command = sys.argv[1:] if argv is None else argv
        write_section(_section(args, command, table, load_at_start), SECTION, RESULTS)
        print(f"wrote the Backends section of {RESULTS}", file=sys.stderr)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet_v2", type=_csv)
    parser.add_argument(
        "--backends",
        default="torch,onnxruntime,tvm",
        type=_csv,
        help="comma list; the first is the baseline of the speed-up",
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument(
        "--threads",
        type=_threads,
        default=[None],
        help="comma list of thread counts, each timed separately and given to "
        "every backend (default: each backend's own default)",
    )
    parser.add_argument("--ort-opset", type=int, default=18)
    parser.add_argument(
        "--tvm-trials", type=int, default=0, help="MetaSchedule trials for TVM (0: untuned)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, keep RESULTS.md")
    return parser.parse_args(argv)


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _threads(text: str) -> list[int | None]:
    return [int(part) for part in _csv(text)] or [None]


def _backend(name: str, args: argparse.Namespace, threads: int | None) -> Any:
    if name == "tvm":
        return get_backend("tvm", trials=args.tvm_trials, threads=threads)
    if name in ("onnxruntime", "ort"):
        return get_backend("onnxruntime", opset=args.ort_opset, intra_op_threads=threads)
    if name == "torch":
        return get_backend("torch", threads=threads)
    return get_backend(name)


def _rows(
    model: str, threads: int | None, macs: int, comparison: BackendComparison
) -> list[dict[str, Any]]:
    rows = []
    for name, entry in comparison.results.items():
        lat = entry.latency
        rows.append(
            {
                "model": model,
                "threads": threads or "default",
                "backend": name,
                "median_ms": lat.median_ms,
                "p90_ms": lat.p90_ms,
                "speedup": entry.speedup,
                "gflops": 2 * macs / (lat.median_ms / 1000.0) / 1e9,
                "rel_diff": entry.max_rel_diff,
                "notes": _notes(entry.info),
            }
        )
    for name, reason in comparison.skipped.items():
        rows.append(
            {
                "model": model,
                "threads": threads or "default",
                "backend": name,
                "notes": f"skipped: {reason[:160]}",
            }
        )
    return rows


def _notes(info: dict[str, Any] | Any) -> str:
    keys = ("opset", "ort_optimized_nodes", "tuned", "trials", "note")
    return ", ".join(f"{k}={info[k]}" for k in keys if k in info)


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | threads | backend | median ms | p90 ms | speed-up vs first | GFLOP/s "
        "| max rel diff | notes |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "median_ms" not in r:
            lines.append(
                f"| {r['model']} | {r['threads']} | {r['backend']} | – | – | – | – | – "
                f"| {r['notes']} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['threads']} | {r['backend']} | {r['median_ms']:.2f} | "
            f"{r['p90_ms']:.2f} | "
            f"{r['speedup']:.2f} | {r['gflops']:.1f} | {r['rel_diff']:.1e} | {r['notes']} |"
        )
    return "\n".join(lines)


def _machine(load_at_start: float) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu = match.group(1).strip() if match else cpu
    except OSError:
        pass
    versions = [f"torch {torch.__version__}"]
    for module in ("onnxruntime", "tvm"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except Exception:  # a missing runtime is reported in the table's notes
            continue
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"1-min load average {load_at_start:.2f} at the start and {os.getloadavg()[0]:.2f} at "
        "the end (other jobs' load distorts the absolute times); "
        f"{platform.system()} {platform.machine()}, Python {platform.python_version()}; "
        + ", ".join(versions)
    )


def _section(args: argparse.Namespace, argv: list[str], table: str, load_at_start: float) -> str:
    command = "python benchmarks/backends.py " + " ".join(shlex.quote(a) for a in argv)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command.strip()}` ({when})  ",
            f"Machine: {_machine(load_at_start)}  ",
            f"Batch {args.batch}, 3x224x224, warmup {args.warmup}, {args.runs} runs; all backends "
            "of a model (at one thread count) interleaved in one loop; speed-up = median of the "
            "first backend / median.",
            "",
            table,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
