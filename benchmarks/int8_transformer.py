"""Benchmark: int8 all-MiniLM-L6-v2 on ONNX Runtime — graphopt static and dynamic vs ORT, PT2E.

Not a test: it reports numbers and asserts nothing about them. Issue 15, item 2: an int8
transformer faster than ORT's ``quantize_dynamic`` (and PT2E) in the same run, at embedding
cosine ≥ 0.99 against fp32, the Lee Pearson within 0.01 of fp32's, and a file no larger than
``quantize_dynamic``'s.

Model and data: the real all-MiniLM-L6-v2 weights (``graphopt.tasks.minilm``: BERT, mean
pooling, L2 normalisation), ``(1, 128)`` token ids and mask. Variants, each an ORT session with
the same options (ORT_ENABLE_ALL, 1 intra-op thread, spinning off, sequential):

- **fp32**: graphopt's capture, exported by its ORT backend;
- **graphopt static**: ``quantize`` (scheme int8, minmax, uint8 activations) calibrated on the
  task's 64 background documents (``minilm.data()``), the tables float (``embeddings: auto``);
- **graphopt static + int8 embeddings**: the same with ``embeddings: int8``;
- **graphopt dynamic**: ``quantize: {scheme: dynamic}`` (int8 weights per channel, activations
  quantized at run time, int8 embedding tables), no calibration;
- **ORT quantize_dynamic**: ``onnxruntime.quantization.quantize_dynamic`` with its defaults
  (int8 weights per tensor, MatMul and Gather and the other ops its registry covers) as its
  users run it: on ``torch.onnx.export(dynamo=True)``'s fp32 file, in a session with ORT's own
  fusions; and on graphopt's fp32 file in graphopt's session (``SkipLayerNormFusion`` off, see
  ``graphopt/backends/onnxruntime.py``), which leaves only the quantization to compare;
- **opset 23** (``--no-opset23`` leaves them out): fp32 and graphopt dynamic exported at opset
  23, where the exporter writes ONNX's ``Attention`` and ``Gelu`` ops, and ``quantize_dynamic``
  on the opset-23 fp32 files, with its defaults and with ``op_types_to_quantize=["MatMul",
  "Gather"]`` (its default registry turns the ONNX ``Attention`` into a ``QAttention`` that
  ORT 1.32 refuses to load: "Unrecognized attribute: is_causal");
- **PT2E X86InductorQuantizer**: ``benchmarks/quantization.py``'s ``_pt2e`` (torchao's
  ``prepare_pt2e``/``convert_pt2e``), calibrated on the same documents; without torchao the
  row records why.

Fidelity, through each ORT session one document at a time (batch 1, as deployed, and as the
dynamic ranges are then per sentence): the 50 Lee documents' embeddings, their mean cosine with
the fp32 session's, and the Pearson of the pairwise embedding cosines with the human judgments
(1225 pairs; fp32 0.654). Latency: all sessions round-robin in one loop
(``measure_interleaved``: warm-up, median of ``--runs``) on the example sentence, ``--rounds``
rounds with the loop order rotated by one each round; the table gives the median over rounds
of the median latency and of the per-round ratios to fp32 and to ``quantize_dynamic``.
File size: the ONNX file (plus any external data).

    python benchmarks/int8_transformer.py --write     # writes its section of RESULTS.md
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import ToolRuns, write_section  # benchmarks/ is sys.path[0] as a script
from _results import say as _say
from quantization import _file_bytes, _machine, _ort_session, _pt2e

from graphopt.backends import get_backend
from graphopt.backends.base import measure_interleaved
from graphopt.backends.layer_latency import kernel_times
from graphopt.backends.onnxruntime import SLOW_FUSIONS
from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, get_pass
from graphopt.tasks import minilm

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## int8 transformer: MiniLM, graphopt static/dynamic vs ORT quantize_dynamic, PT2E"
BASELINE = "ORT quantize_dynamic"
ONLY = "MatMul+Gather only"
OP_TYPES = ["MatMul", "Gather"]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)
    rows = _bench(args)
    text = _table(rows)
    print(text)
    if args.write:
        section = _section(args, sys.argv[1:] if argv is None else argv, rows, text)
        write_section(section, SECTION, RESULTS)
        _say(f"wrote {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="timed calls per session, per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per session")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--no-pt2e", action="store_true", help="leave PT2E out")
    parser.add_argument("--no-static", action="store_true", help="leave graphopt static out")
    parser.add_argument(
        "--no-opset23", dest="opset23", action="store_false", help="leave the opset-23 rows out"
    )
    parser.add_argument("--write", action="store_true", help="write RESULTS.md's section")
    return parser.parse_args(argv)


def _bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    model = minilm.load_encoder()
    inputs = minilm.example_inputs()
    task = minilm.data()
    calibration = list(task.calibration)
    work = tempfile.TemporaryDirectory(prefix="int8-transformer-")
    folder = Path(work.name)
    gm = trace(model, inputs)
    runs = ToolRuns("minilm", model_column=False)
    sessions, rows, add = runs.sessions, runs.rows, runs.add

    fp32_path = folder / "fp32.onnx"
    add("fp32", lambda: _session(gm, {}, 0.0, inputs, fp32_path, 18))
    if not args.no_static:
        add(
            "graphopt static",
            lambda: _graphopt(gm, inputs, calibration, folder / "static.onnx", scheme="int8"),
        )
        add(
            "graphopt static + int8 embeddings",
            lambda: _graphopt(
                gm, inputs, calibration, folder / "static_emb.onnx", embeddings="int8"
            ),
        )
    dynamic = _quantized(gm, inputs, None, scheme="dynamic")
    add("graphopt dynamic", lambda: _session(*dynamic, inputs, folder / "dynamic.onnx", 18))
    # The peer as its users run it: torch's exporter, quantize_dynamic, ORT's default session.
    # Then the same tool on graphopt's fp32 export in graphopt's session: what is left is the
    # quantization itself (the export's cleanup and the session's fusions are shared).
    plain_18 = _torch_export(model, inputs, folder / "torch_18.onnx", 18)
    add(BASELINE, lambda: _ort_dynamic(plain_18, folder / "ort_dynamic.onnx"))
    if "fp32" in sessions:
        add(
            f"{BASELINE}, graphopt's fp32 file and session",
            lambda: _ort_dynamic(fp32_path, folder / "ort_dynamic_g.onnx", None, SLOW_FUSIONS),
        )
    if args.opset23:  # ONNX's Attention op and Gelu (see graphopt/backends/onnxruntime.py)
        fp32_23 = folder / "fp32_23.onnx"
        add("fp32, opset 23", lambda: _session(gm, {}, 0.0, inputs, fp32_23, 23))
        add(
            "graphopt dynamic, opset 23",
            lambda: _session(*dynamic, inputs, folder / "dynamic_23.onnx", 23),
        )
        plain_23 = _torch_export(model, inputs, folder / "torch_23.onnx", 23)
        add(
            f"{BASELINE}, opset 23",
            lambda: _ort_dynamic(plain_23, folder / "ort_dynamic_23.onnx"),
        )
        add(
            f"{BASELINE}, opset 23, {ONLY}",
            lambda: _ort_dynamic(plain_23, folder / "ort_dynamic_23_mm.onnx", OP_TYPES),
        )
        if "fp32, opset 23" in sessions:
            add(
                f"{BASELINE}, opset 23, {ONLY}, graphopt's fp32 file and session",
                lambda: _ort_dynamic(
                    fp32_23, folder / "ort_dynamic_23_g.onnx", OP_TYPES, SLOW_FUSIONS
                ),
            )
    if not args.no_pt2e:
        add(
            "PT2E X86InductorQuantizer",
            lambda: _pt2e(model, inputs, calibration, folder, split=False),
        )

    _say("minilm: fidelity on the 50 Lee documents, one at a time")
    documents, human = minilm.lee()
    ids, mask = minilm.tokenize(documents)
    feeds = [[ids[i : i + 1].numpy(), mask[i : i + 1].numpy()] for i in range(len(ids))]
    embeddings = {
        tool: np.concatenate([s.run(f)[0] for f in feeds]).astype(np.float64)
        for tool, s in sessions.items()
    }
    reference = embeddings["fp32"]
    pairs = np.triu_indices(len(documents), 1)
    for tool, vectors in embeddings.items():
        unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        rows[tool]["cosine"] = float((unit * ref).sum(1).mean())
        rows[tool]["cosine_min"] = float((unit * ref).sum(1).min())
        rows[tool].update(minilm.correlations((unit @ unit.T)[pairs], human))

    _say(f"minilm: timing {len(sessions)} sessions interleaved, {args.rounds} rounds")
    example = [t.numpy() for t in inputs]
    fns = {tool: (lambda s=s: s.run(example)) for tool, s in sessions.items()}
    names, rounds = list(fns), []
    for k in range(args.rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        rounds.append(
            measure_interleaved(
                {n: fns[n] for n in order}, batch_size=1, warmup=args.warmup, runs=args.runs
            )
        )
    for tool in sessions:
        rows[tool]["ms_rounds"] = [r[tool].median_ms for r in rounds]
        rows[tool]["ms"] = statistics.median(r[tool].median_ms for r in rounds)
        rows[tool]["speedup"] = statistics.median(
            r["fp32"].median_ms / r[tool].median_ms for r in rounds
        )
        if BASELINE in sessions:
            rows[tool]["vs_ort"] = statistics.median(
                r[BASELINE].median_ms / r[tool].median_ms for r in rounds
            )
    if "graphopt dynamic" in sessions:
        rows["graphopt dynamic"]["profile"] = _op_shares(folder / "dynamic.onnx", example)
    sessions.clear()
    work.cleanup()
    return list(rows.values())


def _op_shares(path: Path, example: list[np.ndarray], calls: int = 20) -> dict[str, float]:
    """Share of ORT's kernel time per op type (ORT's profiler, 1 thread, ``calls`` runs).

    Says what quantizing more could win at most: the attention products (Q·Kᵀ as FusedMatMul,
    ·V as MatMul: both operands activations) against the int8 linears."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(path),
        options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(SLOW_FUSIONS),  # the session graphopt's backend runs
    )
    names = [i.name for i in session.get_inputs()]
    for _ in range(calls):
        session.run(None, dict(zip(names, example, strict=True)))
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for op, runs in kernel_times(events).values():
        totals[op] = totals.get(op, 0.0) + sum(runs)
    whole = sum(totals.values()) or 1.0
    return {op: t / whole for op, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def _graphopt(gm, inputs, calibration, path: Path, **options):
    return _session(*_quantized(gm, inputs, calibration, **options), inputs, path, 18)


def _quantized(gm, inputs, calibration, **options):
    """The quantize pass through the pass manager: (graph, note, seconds)."""
    started = time.perf_counter()
    context = PassContext(inputs, {"calibration": calibration} if calibration else {})
    result = PassManager([get_pass("quantize", progress=False, **options)]).run(
        gm, inputs, context=context
    )
    seconds = time.perf_counter() - started
    stats = result.stages[-1].stats
    detail = {
        "note": f"{stats.get('layers_int8')} linears int8, {stats.get('layers_float')} float, "
        f"{stats.get('embeddings_int8', 0)} int8 tables"
    }
    return result.graph_module, detail, seconds


def _session(module, detail, seconds, inputs, path: Path, opset: int):
    """graphopt's ORT backend (1 thread) at ``opset``; the session and the row's facts."""
    backend = get_backend("onnxruntime", intra_op_threads=1, onnx_path=path, opset=opset)
    compiled = backend.compile(module, inputs)
    facts = {
        "seconds": seconds,
        "bytes": _file_bytes(path),
        "ops": compiled.info.get("ort_op_counts", {}),
        "detail": detail,
    }
    return compiled, facts


def _torch_export(model: torch.nn.Module, inputs, path: Path, opset: int) -> Path:
    """``torch.onnx.export(dynamo=True)`` with its defaults: the fp32 file a user of ORT's
    quantizer starts from."""
    with torch.no_grad():
        torch.onnx.export(model, tuple(inputs), str(path), dynamo=True, opset_version=opset)
    return path


def _ort_dynamic(
    fp32_path: Path,
    out: Path,
    op_types: list[str] | None = None,
    disabled_optimizers: tuple[str, ...] = (),
):
    """ORT's quantize_dynamic with its defaults (or only ``op_types``) on ``fp32_path``, in a
    session with ORT's fusions less ``disabled_optimizers``."""
    from onnxruntime.quantization import quantize_dynamic

    started = time.perf_counter()
    quantize_dynamic(str(fp32_path), str(out), op_types_to_quantize=op_types)
    seconds = time.perf_counter() - started
    session, ops = _ort_session(out, out.with_suffix(".optimized.onnx"), disabled_optimizers)
    return session, {"seconds": seconds, "bytes": _file_bytes(out), "ops": ops, "detail": {}}


def _table(rows: list[dict[str, Any]]) -> str:
    fp32 = next((r for r in rows if r["tool"] == "fp32" and "pearson" in r), None)
    lines = [
        "| variant | ms | speed-up vs fp32 | vs quantize_dynamic | Pearson (Δ fp32) | "
        "cosine vs fp32 (min) | file MB | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['tool']} | — | — | — | — | — | — | {row['error']} |")
            continue
        delta = row["pearson"] - fp32["pearson"] if fp32 else float("nan")
        note = row.get("detail", {}).get("note", "")
        lines.append(
            f"| {row['tool']} | {row['ms']:.2f} | ×{row['speedup']:.2f} | "
            f"×{row.get('vs_ort', float('nan')):.2f} | {row['pearson']:.4f} ({delta:+.4f}) | "
            f"{row['cosine']:.4f} ({row['cosine_min']:.4f}) | {row['bytes'] / 1e6:.1f} | {note} |"
        )
    return "\n".join(lines)


def _section(args: argparse.Namespace, argv: list[str], rows, text: str) -> str:
    command = shlex.join(["python", "benchmarks/int8_transformer.py", *argv])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ops = [
        f"- {row['tool']}: "
        + ", ".join(f"{op} {n}" for op, n in list(row.get("ops", {}).items())[:10])
        for row in rows
        if row.get("ops")
    ]
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` ({stamp})  ",
            f"Machine: {_machine()}  ",
            "all-MiniLM-L6-v2 (real weights), seq 128, batch 1, ORT_ENABLE_ALL, 1 intra-op "
            f"thread, spinning off; all sessions round-robin in one loop (warm-up {args.warmup}, "
            f"median of {args.runs}), {args.rounds} rounds with the order rotated, medians over "
            "rounds (vs quantize_dynamic > 1: faster than ORT's tool). Fidelity: the 50 Lee "
            "documents one at a time through each session; Pearson of pairwise embedding "
            "cosines with the human judgments; cosine of each embedding with the fp32 "
            "session's (mean, min). Static rows calibrated on the task's 64 background "
            "documents; the dynamic scheme needs none.",
            "",
            text,
            "",
            "Where graphopt dynamic's time goes (ORT profiler, share of kernel time by op): "
            + ", ".join(
                f"{op} {share:.1%}"
                for row in rows
                for op, share in list(row.get("profile", {}).items())[:8]
            ),
            "",
            *_verdict(rows),
            "",
            "ORT's optimized graphs, most frequent ops:",
            "",
            *ops,
            "",
        ]
    )


def _verdict(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's aims for each graphopt dynamic row, against the quantize_dynamic row of the
    same opset and fp32's Pearson: faster, cosine ≥ 0.99, |ΔPearson| ≤ 0.01, file ≤ theirs."""
    by_tool = {row["tool"]: row for row in rows if "error" not in row}
    fp32 = by_tool.get("fp32")
    lines = []
    pairs = (
        ("graphopt dynamic", BASELINE),
        ("graphopt dynamic", f"{BASELINE}, graphopt's fp32 file and session"),
        ("graphopt dynamic, opset 23", f"{BASELINE}, opset 23, {ONLY}"),
        (
            "graphopt dynamic, opset 23",
            f"{BASELINE}, opset 23, {ONLY}, graphopt's fp32 file and session",
        ),
    )
    for ours_name, theirs_name in pairs:
        ours, theirs = by_tool.get(ours_name), by_tool.get(theirs_name)
        if not (ours and theirs and fp32):
            continue
        ratios = [a / b for a, b in zip(ours["ms_rounds"], theirs["ms_rounds"], strict=True)]
        if max(ratios) < 1:
            speed = "faster in every round"
        elif min(ratios) > 1:
            speed = "slower in every round"
        else:
            speed = f"tied: the rounds disagree, {min(ratios):.3f}–{max(ratios):.3f}"
        checks = [
            f"latency {statistics.median(ratios):.3f}× theirs ({speed})",
            f"cosine {ours['cosine']:.4f} ({'≥' if ours['cosine'] >= 0.99 else '<'} 0.99)",
            f"Pearson {ours['pearson'] - fp32['pearson']:+.4f} from fp32 "
            f"({'within' if abs(ours['pearson'] - fp32['pearson']) <= 0.01 else 'outside'} 0.01)",
            f"file {ours['bytes'] / 1e6:.2f} MB vs {theirs['bytes'] / 1e6:.2f} MB "
            f"({'no larger' if ours['bytes'] <= theirs['bytes'] else 'larger'})",
        ]
        lines.append(f"- **{ours_name}** vs {theirs_name}: " + "; ".join(checks) + ".")
    return ["Aims (issue 15, item 2):", "", *lines] if lines else []


if __name__ == "__main__":
    raise SystemExit(main())
