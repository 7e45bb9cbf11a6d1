"""Benchmark: the per-layer latency tables against the layers' time inside the whole model.

Not a test. ``prune: {selection: latency_aware}`` and ``target_latency`` add up per-layer
ONNX Runtime tables (``graphopt.backends.layer_latency.OrtLayerLatency``): each conv/linear
timed alone. This compares each table entry at full width with the same layer's kernel time in
the whole model (fold_batchnorm, then ``quantize`` int8 for ``--precision int8``), from ORT's
per-node profile (the mean over ``--runs`` runs after 50 warm-up runs), at batch 1, 1 thread.
Ratio = table / in-model time; 1 is a perfect table.

    python benchmarks/latency_tables.py --model mobilenet_v2 --precision int8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import onnxruntime as ort
import pipeline as PL  # benchmarks/ is sys.path[0] when run as a script
import quantization as Q

from graphopt.backends.layer_latency import kernel_times
from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, get_pass
from graphopt.pruning.dependency import build_channel_graph
from graphopt.pruning.groups import build_groups
from graphopt.pruning.latency import LatencyCostModel

LAYERS = ("Conv", "FusedConv", "QLinearConv", "Gemm", "QGemm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    model, inputs = PL._build(args.model, PL._parse(["--models", args.model]))
    inputs = tuple(x[:1] for x in inputs)
    context = PassContext(inputs, {"calibration": Q._samples(model, inputs, 16, 8, 1)})
    gm = trace(model, inputs)
    folded = PassManager([get_pass("fold_batchnorm")]).run(gm, inputs, context=context)
    final = folded.graph_module
    if args.precision == "int8":
        quantize = get_pass("quantize", progress=False, observer="minmax")
        final = PassManager([quantize]).run(final, inputs, context=context).graph_module
    folder = Path(tempfile.mkdtemp(prefix="latency-tables-"))
    Q._graphopt_session(final, inputs, folder / "model.onnx", None, {})
    in_model = _profile(folder, inputs, args.runs)
    groups = build_groups(build_channel_graph(folded.graph_module))
    cost = LatencyCostModel(
        folded.graph_module, groups, PL._tables(), precision=args.precision, batch=1
    )
    table = {n: cost.base[n] * 1e6 for n in cost.base}
    if len(table) != len(in_model):
        print(f"{len(table)} table layers but {len(in_model)} in the model", file=sys.stderr)
        return 1
    ratios = [table[n] / m for n, m in zip(table, in_model, strict=True)]
    print("| layer | spec | in model µs | table µs | ratio |\n|---|---|---:|---:|---:|")
    for (name, t), m, r in zip(table.items(), in_model, ratios, strict=True):
        spec = cost.specs.get(name)
        shape = f"{spec.kind} {spec.input_shape}→{spec.out_channels} g{spec.groups}" if spec else ""
        print(f"| {name} | {shape} | {m:.1f} | {t:.1f} | {r:.2f} |")
    q = statistics.quantiles(ratios, n=10)
    print(
        f"\ntotal: in model {sum(in_model) / 1000:.3f} ms, tables {sum(table.values()) / 1000:.3f}"
        f" ms; ratio median {statistics.median(ratios):.2f}, 10–90 % {q[0]:.2f}–{q[-1]:.2f}"
    )
    return 0


def _profile(folder: Path, inputs: tuple, runs: int) -> list[float]:
    """Mean µs of each conv/linear kernel of the model, in graph order."""
    options = ort.SessionOptions()
    options.enable_profiling, options.intra_op_num_threads = True, 1
    options.profile_file_prefix = str(folder / "profile")
    session = ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: inputs[0].numpy()}
    for _ in range(50 + runs):
        session.run(None, feed)
    nodes = kernel_times(json.loads(Path(session.end_profiling()).read_text()))
    return [statistics.fmean(runs[50:]) * 1e6 for op, runs in nodes.values() if op in LAYERS]


if __name__ == "__main__":
    raise SystemExit(main())
