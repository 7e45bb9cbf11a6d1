"""How long int8 static quantization takes: graphopt's pass vs ORT's quantize_static vs PT2E.

Each tool does the same work on the same model: BN folding, min-max calibration on the same
seeded samples (batches of 8), per-channel int8 weights, a QDQ graph out.

- **graphopt**: ``PassManager([quantize])`` on the captured graph (capture excluded), which
  also scores its result on 32 of the samples (the pass's cosine and top-1 stats).
- **ORT**: ``quant_pre_process`` + ``quantize_static`` U8S8 (fp32 ONNX export excluded).
- **PT2E**: ``prepare_pt2e`` (X86InductorQuantizer) + calibration + ``convert_pt2e``, capture
  included (its prepare needs a fresh capture); ResNets with reused modules split.

Every tool runs with its own default threads: torch's (``torch.get_num_threads()`` at start,
the machine's cores) and ORT's (its calibration session's default). Rounds are interleaved,
the order rotated by one tool each round; the table gives the median and range of each tool's
seconds and the median of the per-round ratios to ORT (< 1: faster than ORT's tool).

    python benchmarks/quantize_time.py --rounds 3 --write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import quantization as q  # benchmarks/ is sys.path[0] when run as a script
import torch
from _results import load_average, one_line, say, versions_text, write_section

from graphopt.capture import trace
from graphopt.zoo import get_model

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Quantize pass time vs ONNX Runtime and PT2E"
MODELS = {"resnet50": None, "mobilenet_v2": None, "transformer": (1, 128)}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    threads = torch.get_num_threads()
    rows = [row for name in args.models for row in _bench_model(name, args)]
    text = _table(rows)
    print(text)
    if args.write:
        command = "python benchmarks/quantize_time.py " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        section = "\n".join(
            [
                SECTION,
                "",
                f"`{command}` — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
                f"{versions_text()}; torch threads {threads}, load average at the end "
                f"{load_average()}.",
                "",
                f"{args.samples} seeded calibration samples in batches of 8, min-max, "
                "per-channel int8 weights, U8S8; each tool at its default threads; "
                f"{args.rounds} rounds interleaved, order rotated; median (range) of seconds.",
                "",
                text,
                "",
            ]
        )
        write_section(section, SECTION, RESULTS)
        say(f"wrote the {SECTION[3:]} section of {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), type=q._csv)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pt2e", action="store_true")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return args


def _bench_model(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    shape = MODELS[name]
    model, inputs = get_model(name, input_shape=shape) if shape else get_model(name)
    calibration = q._samples(model, inputs, args.samples, 8, 1)
    folder = Path(tempfile.mkdtemp(prefix=f"quant-time-{name}-"))
    gm = trace(model, inputs)
    fp32 = folder / "fp32.onnx"
    q._graphopt_session(gm, inputs, fp32, None, {})
    tools: dict[str, Callable[[], float]] = {
        "graphopt quantize": lambda: _graphopt_seconds(gm, inputs, calibration),
        "ORT quantize_static U8S8": lambda: q._ort_static(fp32, calibration, "U8S8", folder)[1][
            "seconds"
        ],
    }
    if not args.no_pt2e and name != "transformer":
        split = name.startswith("resnet")
        tools["PT2E X86InductorQuantizer"] = lambda: _pt2e_seconds(
            model, inputs, calibration, split=split
        )
    seconds: dict[str, list[float]] = {tool: [] for tool in tools}
    errors: dict[str, str] = {}
    order = list(tools)
    for index in range(args.rounds):
        for tool in order[index % len(order) :] + order[: index % len(order)]:
            if tool in errors:
                continue
            say(f"{name}: round {index + 1}, {tool}")
            try:
                seconds[tool].append(float(tools[tool]()))
            except Exception as exc:  # a peer that fails on this model: say so in the table
                errors[tool] = one_line(exc)
    ort = seconds["ORT quantize_static U8S8"]
    rows = []
    for tool, values in seconds.items():
        row: dict[str, object] = {"model": name, "tool": tool, "error": errors.get(tool, "")}
        if values:
            row["median"] = statistics.median(values)
            row["range"] = (min(values), max(values))
            if len(ort) == len(values):
                row["vs ORT"] = statistics.median(a / b for a, b in zip(values, ort, strict=True))
        rows.append(row)
    return rows


def _graphopt_seconds(gm: torch.fx.GraphModule, inputs: tuple, calibration: list) -> float:
    """The pass manager's run of ``quantize`` (no export: only the pass is timed)."""
    return q._graphopt_quantized(gm, inputs, calibration, "minmax")[1]


def _pt2e_seconds(
    model: torch.nn.Module, inputs: tuple, calibration: list, *, split: bool
) -> float:
    """PT2E's capture + prepare + calibration + convert, as ``quantization._pt2e`` times it."""
    if split:
        model, _reused = q._split_reused_modules(model, inputs)
    return q._pt2e_converted(model, inputs, calibration)[1]


def _table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | tool | seconds (range) | vs ORT | notes |",
        "|---|---|---:|---:|---|",
    ]
    for row in rows:
        if "median" in row:
            lo, hi = row["range"]  # type: ignore[misc]
            cell = f"{row['median']:.1f} ({lo:.1f}–{hi:.1f})"
            ratio = f"{row['vs ORT']:.2f}" if "vs ORT" in row else "–"
        else:
            cell, ratio = "–", "–"
        lines.append(f"| {row['model']} | {row['tool']} | {cell} | {ratio} | {row['error']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
