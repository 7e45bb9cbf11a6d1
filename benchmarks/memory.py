"""Time and peak memory of the whole pipeline against model size (issue 15, item 6).

An HF BERT encoder (hidden 512, 8 heads, FFN 2048, sequence 128, batch 1, built from a config,
random weights, a 1 000-token vocabulary so the layers dominate) with 2, 4, 8 and 16 layers
goes through ``graphopt.compress``: capture → prune (heads and FFN, 70 % of the MACs) → low
rank (svd, ratio 0.5) → quantize (int8, 16 random calibration samples); no backend. Each size
runs in its own subprocess, so its peak resident memory (``VmHWM``) is its own.

What is reported per size: the model's parameter bytes; the process's resident memory before
``compress`` (the *baseline*: Python, torch, the built model, the inputs); the peak above that
baseline overall and inside each stage (``/proc/self/clear_refs`` resets the high-water mark
between stages; a pass's peak counts what the earlier stages left alive); peak ÷ model size
(issue 15's aim: ≤ 2.5); and the wall time of capture, each pass and the whole run. Linear
scaling in time means seconds ÷ layers roughly constant.

Usage: ``python benchmarks/memory.py [--layers 2 4 8 16] [--write]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from _results import (  # benchmarks/ is sys.path[0] when run as a script
    load_average,
    versions_text,
    write_section,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Memory and time against model size"
HIDDEN, HEADS, FFN, SEQ, VOCAB = 512, 8, 2048, 128, 1000


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


def child(layers: int) -> dict:
    """One size, in this process: the numbers of one table row."""
    import torch
    import transformers

    import graphopt
    from graphopt.loading import load_data
    from graphopt.passes import Pass, get_pass

    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=HEADS,
        intermediate_size=FFN,
        max_position_embeddings=SEQ,
        attn_implementation="eager",
    )
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    ids = torch.randint(0, VOCAB, (1, SEQ))
    mask = torch.ones(1, SEQ, dtype=torch.long)
    inputs = (ids, mask)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    passes = [
        get_pass("prune", target_macs=0.7),
        get_pass("low_rank", method="svd", ratio=0.5),
        get_pass("quantize", calibration={"samples": 16}, progress=False),
    ]
    data = load_data("random", inputs)
    stages: dict[str, dict[str, float]] = {}
    run_pass = Pass.run

    def timed_run(self: Pass, gm, ctx):
        _reset_peak()
        start = time.perf_counter()
        out = run_pass(self, gm, ctx)
        stages[self.name] = {
            "seconds": time.perf_counter() - start,
            "peak_mb": (_status_kb("VmHWM") - baseline_kb) / 1024,
        }
        return out

    Pass.run = timed_run  # type: ignore[method-assign]
    trace = graphopt.trace
    traced: dict[str, float] = {}

    def timed_trace(*args, **kwargs):
        start = time.perf_counter()
        out = trace(*args, **kwargs)
        traced["seconds"] = time.perf_counter() - start
        traced["peak_mb"] = (_status_kb("VmHWM") - baseline_kb) / 1024
        return out

    import graphopt.runner as runner

    runner.trace = timed_trace
    baseline_kb = _status_kb("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    run = graphopt.compress(model, inputs, passes, data=data, name=f"bert{layers}")
    total = time.perf_counter() - start
    del run
    return {
        "layers": layers,
        "model_mb": model_bytes / 2**20,
        "baseline_mb": baseline_kb / 1024,
        "capture": traced,
        "stages": stages,
        "total_seconds": total,
        "peak_mb": max([traced["peak_mb"], *(s["peak_mb"] for s in stages.values())]),
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child)))
        return
    started = time.time()
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for layers in args.layers:
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(layers)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"{layers} layers failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(_row(rows[-1]), flush=True)
    text = _table(rows)
    print(text)
    if args.write:
        write_section(_section(argv, text, time.time() - started), SECTION, RESULTS)


def _row(r: dict) -> str:
    stages = r["stages"]
    cells = [
        str(r["layers"]),
        f"{r['model_mb']:.1f}",
        f"{r['baseline_mb']:.0f}",
        f"{r['peak_mb']:.0f}",
        f"{r['peak_mb'] / r['model_mb']:.2f}",
        f"{r['capture']['peak_mb']:.0f}",
        *(f"{stages[s]['peak_mb']:.0f}" for s in ("prune", "low_rank", "quantize")),
        f"{r['capture']['seconds']:.1f}",
        *(f"{stages[s]['seconds']:.1f}" for s in ("prune", "low_rank", "quantize")),
        f"{r['total_seconds']:.1f}",
        f"{r['total_seconds'] / r['layers']:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def _table(rows: list[dict]) -> str:
    head = (
        "| layers | model MB | baseline MB | peak above baseline MB | peak ÷ model | "
        "capture MB | prune MB | low_rank MB | quantize MB | capture s | prune s | "
        "low_rank s | quantize s | total s | s per layer |"
    )
    rule = "|" + "---:|" * 15
    return "\n".join([head, rule, *(_row(r) for r in rows)])


def _section(argv: list[str], table: str, seconds: float) -> str:
    from graphopt.provenance import machine

    version_text = versions_text()
    command = " ".join(["python benchmarks/memory.py", *argv])
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
            f"{seconds / 60:.0f} min)  ",
            f"Machine: {machine()['cpu']}, {os.cpu_count()} logical cores, torch threads 1, "
            f"load average at the end {load_average()}; "
            f"{platform.system()} {platform.machine()}, Python {platform.python_version()}; "
            f"{version_text}  ",
            f"HF BERT encoder, hidden {HIDDEN}, {HEADS} heads, FFN {FFN}, sequence {SEQ}, "
            f"vocabulary {VOCAB}, batch 1; `compress` with prune(target_macs=0.7) → "
            "low_rank(svd, 0.5) → quantize(int8, 16 samples), no backend; one subprocess per "
            "size. Memory is resident memory above the baseline (the process before "
            "`compress`, holding the user's model); a stage's peak includes what earlier "
            "stages left alive.",
            "",
            table,
            "",
        ]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
