"""Benchmark: third-party architectures through the whole pipeline — what passes, what freezes.

Every entry of ``tests/coverage/architectures.py`` (HF transformers across vision, text and
audio; MONAI, EfficientNet-PyTorch, pytorchcv, MLP-Mixer) is built from a small random config
and run through fold_batchnorm → prune(target_macs=0.7) → low_rank(svd, ratio 0.5) →
quantize(int8) → ONNX Runtime (``tests/coverage/pipeline.py``), each in its own subprocess so
that one crash, hang or leak cannot take the others with it. Per model: the stages that
modified it, MACs and parameters kept, the fully frozen prune groups with their reasons, ORT's
max relative difference against the compressed graph in torch, and the status (``ok`` or the
stage that failed, with its one-line error). The aim (issue 13) is ≥ 95 % through the whole
pipeline. Not a test: it reports and asserts nothing (the fast entries are tests).

    python benchmarks/coverage.py --write             # everything, writes RESULTS.md
    python benchmarks/coverage.py --models swin,gpt2  # a few, printed only
    python benchmarks/coverage.py --latency           # also time original vs compressed on ORT
    python benchmarks/coverage.py --jobs 2            # two models at a time

Writes the "Coverage: third-party architectures through the whole pipeline" section of
``benchmarks/RESULTS.md`` with ``--write`` (other sections are kept). Entries whose package is
not installed are listed as skipped and left out of the pass rate.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from _results import (  # benchmarks/ is sys.path[0] when run as a script
    load_average,
    versions_text,
    write_section,
)
from _results import say as _say

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.coverage, the registry shared with the test suite

from tests.coverage.architectures import ARCHITECTURES, Architecture, get  # noqa: E402
from tests.coverage.pipeline import Outcome  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Coverage: third-party architectures through the whole pipeline"
AIM = 0.95
_MARK = "COVERAGE-ROW "  # the subprocess's result line on stdout


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.one:
        return _run_one(args.one, args)
    started = time.time()
    skipped = [a for a in args.models if not a.available()]
    for arch in skipped:
        _say(f"{arch.name}: skipped, {arch.source} is not installed")

    def one(arch: Architecture) -> Outcome:
        outcome = _in_subprocess(arch, args)
        _say(f"{arch.name}: {outcome.status} in {outcome.seconds:.1f} s {outcome.error}")
        return outcome

    runnable = [a for a in args.models if a.available()]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each model is a subprocess
        outcomes = list(pool.map(one, runnable))
    text = _table(outcomes, skipped)
    print(text)
    _say(f"total {time.time() - started:.0f} s")
    if args.write:
        argv = sys.argv[1:] if argv is None else argv
        write_section(_section(args, argv, text, time.time() - started), SECTION, RESULTS)
        _say(f"wrote the {SECTION[3:]} section of {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(a.name for a in ARCHITECTURES))
    parser.add_argument("--fast", action="store_true", help="only the entries the tests run")
    parser.add_argument("--latency", action="store_true", help="also time both on ORT")
    parser.add_argument("--runs", type=int, default=20, help="timed runs with --latency")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per model")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per model")
    parser.add_argument("--jobs", type=int, default=1, help="models run at a time")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the subprocess's own entry point
    args = parser.parse_args(argv)
    if args.one:
        return args
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    try:
        args.models = [get(n) for n in names]
    except KeyError as exc:
        parser.error(str(exc))
    if args.fast:
        args.models = [a for a in args.models if a.fast]
    return args


def _run_one(name: str, args: argparse.Namespace) -> int:
    """In the subprocess: one model through the pipeline, its row as one JSON line."""
    import warnings

    import torch

    from tests.coverage.pipeline import run_pipeline

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    # onnxscript's constant folding logs "Evaluation failed: cannot reshape …" on shape
    # arithmetic with a dynamic batch; the folding is skipped, the model is unchanged
    logging.getLogger("onnxscript").setLevel(logging.ERROR)
    outcome = run_pipeline(get(name), latency=args.latency, runs=args.runs)
    print(_MARK + json.dumps(outcome.as_row()), flush=True)
    return 0


def _in_subprocess(arch: Architecture, args: argparse.Namespace) -> Outcome:
    command = [sys.executable, str(Path(__file__).resolve()), "--one", arch.name]
    command += ["--threads", str(args.threads), "--runs", str(args.runs)]
    command += ["--latency"] if args.latency else []
    head = {"name": arch.name, "family": arch.family, "source": arch.source}
    start = time.time()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return Outcome(
            **head,
            status="timeout",
            error=f"over {args.timeout:.0f} s",
            seconds=time.time() - start,
        )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            return Outcome.from_row(json.loads(line[len(_MARK) :]))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return Outcome(
        **head,
        status="crashed",
        error=f"exit {done.returncode}: {tail[:300]}",
        seconds=time.time() - start,
    )


def _table(outcomes: list[Outcome], skipped: list[Architecture]) -> str:
    ok = sum(o.ok for o in outcomes)
    rate = ok / max(len(outcomes), 1)
    lines = [
        f"Pass rate: **{ok}/{len(outcomes)} ({rate:.0%})** through the whole pipeline "
        f"(aim ≥ {AIM:.0%}: {'met' if rate >= AIM else 'MISSED'})"
        + (
            f"; skipped (package not installed): {', '.join(a.name for a in skipped)}"
            if skipped
            else ""
        ),
        "",
        "| model | family | source | status | stages that modified it | MACs kept "
        "| params kept | groups pruned / frozen / all | ORT max rel. diff | ORT ms orig → comp "
        "| run s |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:
        status = "ok" if o.ok else f"**{o.status} failed**: {_cell(o.error)}"
        latency = f"{o.latency_ms[0]:.3f} → {o.latency_ms[1]:.3f}" if o.latency_ms else "–"
        lines.append(
            f"| {o.name} | {o.family} | {o.source} | {status} | {', '.join(o.modified) or '–'} "
            f"| {_ratio(o.macs_kept)} | {_ratio(o.params_kept)} "
            f"| {o.pruned_groups} / {len(o.frozen)} / {o.groups} "
            f"| {'–' if o.ort_max_diff is None else f'{o.ort_max_diff:.2e}'} | {latency} "
            f"| {o.seconds:.1f} |"
        )
    lines += ["", "Fully frozen prune groups and why (the prune stage's `frozen` stats):", ""]
    for o in outcomes:
        if o.frozen:
            reasons = _reasons(o.frozen)
            lines.append(f"- {o.name} ({len(o.frozen)}): {reasons}")
    return "\n".join(lines)


def _reasons(frozen: tuple[tuple[str, str], ...], limit: int = 4) -> str:
    """The distinct reasons, each with the groups it froze, the most frequent first."""
    by_reason: dict[str, list[str]] = {}
    for group, reason in frozen:
        for part in reason.split("; ")[:1]:  # the first reason of a group is the cause
            by_reason.setdefault(_generic(part), []).append(group)
    ranked = sorted(by_reason.items(), key=lambda kv: -len(kv[1]))
    shown = [
        f"{_cell(r)} ({len(g)}: {', '.join(g[:2])}{', …' if len(g) > 2 else ''})"
        for r, g in ranked[:limit]
    ]
    more = f"; and {len(ranked) - limit} other reasons" if len(ranked) > limit else ""
    return "; ".join(shown) + more


def _generic(reason: str) -> str:
    """A reason without its node name, so the same cause in every layer reads once."""
    head, sep, tail = reason.partition(" at ")
    if not sep:
        return reason
    _node, _, what = tail.partition(" ")
    return f"{head} {what}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _section(args: argparse.Namespace, argv: list[str], table: str, seconds: float) -> str:
    from graphopt.provenance import machine

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/coverage.py " + shlex.join(argv)
    version_text = versions_text()
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command.strip()}` ({stamp}, {seconds / 60:.0f} min)  ",
            f"Machine: {machine()['cpu']}, {os.cpu_count()} logical cores, torch threads "
            f"{args.threads}, load average at the end {load_average()}; "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}; "
            f"{version_text}  ",
            f"{args.jobs} model(s) at a time (run s is wall time, shared machine). "
            "Each model is built from a small random config (`tests/coverage/architectures.py`)"
            " and run in its own subprocess: fold_batchnorm → prune(target_macs=0.7) → "
            "low_rank(svd, ratio 0.5) → quantize(int8, 16 synthetic calibration samples) → "
            "ONNX Runtime, whose output is compared with the compressed graph run by torch. "
            "MACs/params kept: compressed ÷ original (quantize keeps MACs; int8 size is not "
            "counted here). Random weights: the numbers say what runs, not what is accurate.",
            "",
            table,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
