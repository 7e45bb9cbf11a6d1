"""Benchmark: low-rank methods at the same MACs reduction, output fidelity and ORT speed-up.

Not a test: it reports numbers and asserts nothing about them. For each model (ResNet-50,
VGG-11-BN, the zoo transformer; random seeded weights, no fine-tuning) and each method of the
``low_rank`` pass, the pass's ``ratio`` is searched by bisection on the pass's own cost model
(``graphopt.lowrank.plan``, no factoring needed) for the largest ratio whose model keeps at most
``--target`` of the original MACs (default 0.5: 2× fewer MACs), then the pass runs once at that
ratio through the ``PassManager``. The layers output-PCA cannot calibrate (classifier heads
see one vector per sample) are skipped for every method, so all methods cut the same layers.
``tucker``, ``cp`` and ``spatial_svd`` fall back to ``svd`` on linear layers, so on the
transformer only ``svd`` and ``pca`` are distinct.

Reported per method: the MACs and parameters kept (``graphopt.analysis.analyze``), the output
cosine (flattened logits vs the original on ``--held-out`` seeded inputs that PCA's
calibration never saw, which come from the same distribution), the relative output error
``max|y − ŷ| / max|y|``, the decomposition time (pass manager run: calibration, factoring,
checks), and the ONNX Runtime speed-up vs the
original: all variants are compiled on graphopt's ORT backend and timed round-robin in one
loop (``compare_on_backend``), so machine noise hits all alike.

    python benchmarks/low_rank.py                                  # all models, 224x224
    python benchmarks/low_rank.py --models transformer --runs 20   # one model

Prints a Markdown table (it writes no file).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from typing import Any

import torch

from graphopt.analysis import analyze
from graphopt.backends import get_backend
from graphopt.backends.compare import compare_on_backend
from graphopt.capture import trace
from graphopt.ir import iter_ops
from graphopt.lowrank.layers import LINEAR_OR_CONV, read_layer
from graphopt.lowrank.plan import RankRule, method_for, plan_layer
from graphopt.pass_manager import PassManager, relative_error
from graphopt.passes.base import PassContext
from graphopt.passes.low_rank import LowRank
from graphopt.zoo import get_model

MODELS = {  # input shape, builder options, layers PCA cannot calibrate (one vector per sample)
    "resnet50": (lambda a: (1, 3, a.size, a.size), {}, ["fc"]),
    "vgg11_bn": (lambda a: (1, 3, a.size, a.size), {}, ["classifier"]),
    "transformer": (lambda a: (1, a.seq), {}, ["pooler", "classifier"]),
}
CNN_METHODS = ("svd", "tucker", "cp", "spatial_svd", "pca")
LINEAR_METHODS = ("svd", "pca")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name in args.models:
        rows.extend(_bench_model(name, args))
    print(_table(rows, args))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=list(CNN_METHODS), choices=CNN_METHODS)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs to keep")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--seq", type=int, default=128, help="transformer sequence length")
    parser.add_argument("--calibration", type=int, default=4, help="calibration batches")
    parser.add_argument("--calibration-batch", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=8, help="held-out samples for cosine")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (decomposition)")
    parser.add_argument("--ort-threads", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    return parser.parse_args(argv)


def _bench_model(name: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    shape_of, build, skip = MODELS[name]
    shape = shape_of(args)
    model, inputs = get_model(name, input_shape=shape, **build)
    gm = trace(model, inputs)
    base = analyze(gm)
    batch = (args.calibration_batch, *shape[1:])
    calibration = [
        get_model(name, input_shape=batch, seed=s, **build)[1]
        for s in range(1, 1 + args.calibration)
    ]
    held_out = get_model(name, input_shape=(args.held_out, *shape[1:]), seed=1000, **build)[1]
    with torch.no_grad():
        reference = gm(*held_out)
    methods = [m for m in args.methods if name != "transformer" or m in LINEAR_METHODS]
    variants, rows = {"original": gm}, []
    for method in methods:
        _say(f"{name}: {method}")
        ratio = _search_ratio(gm, method, args.target, base.macs, skip)
        start = time.perf_counter()
        context = PassContext(inputs, {"calibration": calibration})
        pass_ = LowRank(method=method, ratio=ratio, skip=skip)
        result = PassManager([pass_]).run(gm, inputs, context=context)
        seconds = time.perf_counter() - start
        out = result.graph_module
        cost = analyze(out)
        with torch.no_grad():
            got = out(*held_out)
        variants[method] = out
        rows.append(
            {
                "model": name,
                "method": method,
                "ratio": ratio,
                "layers": result.stages[-1].stats["decomposed"],
                "macs": cost.macs / base.macs,
                "params": cost.params / base.params,
                "cosine": _cosine(reference, got),
                "error": relative_error([reference], [got]),
                "seconds": seconds,
            }
        )
    _say(f"{name}: ONNX Runtime, {len(variants)} variants interleaved")
    backend = get_backend("onnxruntime", intra_op_threads=args.ort_threads)
    comparison = compare_on_backend(backend, variants, inputs, warmup=args.warmup, runs=args.runs)
    original_ms = comparison.results["original"].latency.median_ms
    for row in rows:
        entry = comparison.results[row["method"]]
        row.update(ms=entry.latency.median_ms, speedup=entry.speedup, ort_rel=entry.max_rel_diff)
    rows.insert(
        0,
        {
            "model": name,
            "method": "original",
            "ratio": 1.0,
            "layers": 0,
            "macs": 1.0,
            "params": 1.0,
            "cosine": 1.0,
            "error": 0.0,
            "seconds": 0.0,
            "ms": original_ms,
            "speedup": 1.0,
            "ort_rel": comparison.results["original"].max_rel_diff,
            "base_macs": base.macs,
        },
    )
    return rows


def _search_ratio(gm, method: str, target: float, original: int, skip: list[str]) -> float:
    """Largest ratio whose predicted MACs are at most ``target · original`` (bisection).

    Predicted MACs fall monotonically with the ratio: a higher ratio means higher ranks, and a
    layer whose rank no longer saves is kept whole, which costs even more.
    """
    layers = []
    for node in iter_ops(gm, LINEAR_OR_CONV):
        layer = read_layer(gm, node)
        if isinstance(layer, str) or any(layer.path.startswith(s) for s in skip):
            continue
        try:
            layers.append((layer, method_for(layer, method)))
        except ValueError:
            continue

    def macs(ratio: float) -> int:
        saved = 0
        for layer, layer_method in layers:
            plan = plan_layer(layer, layer_method, RankRule(ratio=ratio))
            if plan.saves:
                saved += plan.macs_before - plan.macs_after
        return original - saved

    low, high = 1e-3, 1.0
    for _ in range(30):
        middle = (low + high) / 2
        if macs(middle) <= target * original:
            low = middle
        else:
            high = middle
    return low


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over samples of the cosine between flattened outputs."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    return float(torch.nn.functional.cosine_similarity(a, b, dim=1).mean())


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"Low-rank at {1 / args.target:g}× fewer MACs (target {args.target:g}); images "
        f"{args.size}×{args.size}, transformer seq {args.seq}; random seeded weights, no "
        f"fine-tuning; {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} torch thread(s), ORT threads "
        f"{args.ort_threads or 'default'}, {args.runs} interleaved ORT runs (median).",
        "",
        "| model | method | ratio | layers | MACs kept | params kept | cosine | rel. error "
        "| decompose s | ORT ms | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['ratio']:.3f} | {r['layers']} | "
            f"{r['macs']:.1%} | {r['params']:.1%} | {r['cosine']:.4f} | {r['error']:.3g} | "
            f"{r['seconds']:.1f} | {r['ms']:.2f} | {r['speedup']:.2f}× |"
        )
    return "\n".join(lines)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
