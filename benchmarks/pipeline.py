"""Benchmark: graphopt's full pipeline (prune → int8) against Torch-Pruning + ORT / PT2E.

Not a test: it reports numbers and asserts nothing about them. Per model, at
``--target-macs`` (default 50 %) of the MACs with ``--round-to`` (16) channels, every row
below ends as an ONNX Runtime session with the same options (graphopt's backend options:
ORT_ENABLE_ALL, 1 intra-op thread, spinning off, sequential):

- **fp32**: the original, exported by graphopt's ORT backend (the reference of every row).
- **graphopt prune + quantize**: ``fold_batchnorm`` → ``prune`` (``target_macs``, ``round_to``;
  one row per ``--importances``, default ``l2`` and ``reconstruction``, ThiNet's greedy on the
  calibration data, about a minute on ResNet-50 with 64 samples) → ``quantize`` (the pass's
  defaults: int8 QDQ, per-channel int8 weights, uint8 activations, min-max; ``scheme:
  dynamic`` for the transformers), through ``PassManager`` with the calibration batches in
  the ``PassContext``, compiled by graphopt's ORT backend. The pass manager runs twice — fold +
  prune, then quantize — so that the MACs of the pruned fp32 graph can be counted between
  them; the tool time is the sum of both runs (capture and export excluded).
- **graphopt prune … latency_aware + quantize**: the same at the same MACs target with
  ``selection: latency_aware`` (one row per ``--latency-aware``): removals ranked by
  importance lost per second saved on per-layer ONNX Runtime latency tables
  (``OrtLayerLatency``, cached per machine), stopping at the MACs target; the tables are of
  int8 QDQ layers (``latency_precision: int8``, QLinearConv) where the model is quantized
  static int8 next, of fp32 layers for the dynamic scheme (its activations are quantized at
  run time, the fp32 tables' shape of cost is the closer one).
- **Torch-Pruning** (DepGraph): global ranking, ``GroupMagnitudeImportance(p=2)``, the
  classifier ignored, the pruning ratio bisected to the MACs target
  (``benchmarks/pruning.py``'s ``_tp_for_macs``; the search is not counted, only one pruning
  at the ratio found). Its fp32 result, exported by graphopt's backend, is a row of its own,
  and the file that ORT's tools quantize:
  - **+ ORT quantize_static U8S8** (``benchmarks/quantization.py``'s ``_ort_static``:
    ``quant_pre_process``, QDQ, per channel, MinMax, uint8 activations), graphopt's choice;
  - **+ ORT quantize_static S8S8** (ORT's default types);
  - **+ PT2E** ``X86InductorQuantizer`` (torchao), ResNets with their reused modules split
    (``_pt2e(split=True)``); a failure is a row with the error's first line.
- **graphopt @ Torch-Pruning's latency**: the fp32 ORT latency ratio of the Torch-Pruning
  model to the original is measured first (a short interleaved timing of the two sessions,
  median of the per-round ratios); graphopt then prunes with ``target_latency`` set to it
  (per-layer ONNX Runtime latency tables, ``OrtLayerLatency``, cached per machine; the target
  is on the predicted latency of the convs and linears; importance ``--latency-importance``,
  default ``l2``) and quantizes as above: fidelity at equal latency.

Transformers (the zoo ``transformer`` at ``(1, --seq)`` token ids and a HF BERT built from a
``BertConfig``: hidden 256, 4 layers, 4 heads, FFN 1024, vocabulary 30522, a 10-way
``BertForSequenceClassification`` head, seeded random weights): graphopt quantizes with
``scheme: dynamic`` and the peer is ORT's ``quantize_dynamic`` (its defaults), on the
original and, where Torch-Pruning prunes the model, on its result. Torch-Pruning is tried
plainly on the zoo transformer and, on BERT, with its documented HF set-up (``num_heads`` of
query/key/value, ``prune_head_dims=True``, ``prune_num_heads=False``, the attention modules'
head sizes updated after the step) with the ratio bisected the same way.

Data: ``--calibration-samples`` seeded random-normal images (token ids for the transformers)
in batches of ``--calibration-batch``, the same for every tool; fidelity on ``--held-out``
other seeded samples, one at a time through each session, against the fp32 session: cosine
of the flattened logits (mean and min) and top-1 agreement. Weights are seeded random (no
trained weights or data here): fidelity says how far a tool moves the function, not
accuracy. Latency: batch 1, every session of a model timed round-robin in one loop
(``measure_interleaved``: warm-up, median of ``--runs``), ``--rounds`` rounds with the loop
order rotated by one each round; the table gives the median over rounds of the medians, the
speed-up over fp32 as the median of the per-round ratios, and ``vs peer`` as the median of
the per-round ratios of the row's latency to the peer's (Torch-Pruning + U8S8 for CNNs,
Torch-Pruning + quantize_dynamic, else quantize_dynamic, for transformers; < 1 is faster).
MACs: ``graphopt.analysis.analyze`` on a trace (quantized rows: their pruned fp32 model).
Size: the ONNX file. Tool s: pruning + quantization, capture and export excluded (PT2E's
includes its own ``torch.export`` capture, which is part of its quantization).

    python benchmarks/pipeline.py                          # all models, prints the tables
    python benchmarks/pipeline.py --models mobilenet_v2 --rounds 1 --runs 5
    python benchmarks/pipeline.py --write                  # also writes RESULTS.md's section

Writes the "Full pipeline vs Torch-Pruning + ORT / PT2E" section of ``benchmarks/RESULTS.md``
with ``--write`` (other sections are kept).
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import int8_transformer as IT  # benchmarks/ is sys.path[0] when run as a script
import pruning as P
import quantization as Q
import torch
from _results import ToolRuns, load_average, one_line, say, versions_text, write_section
from torch import nn

from graphopt.analysis import analyze
from graphopt.backends.base import measure_interleaved
from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, get_pass
from graphopt.zoo import get_model

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Full pipeline vs Torch-Pruning + ORT / PT2E"
MODELS = ("resnet50", "mobilenet_v2", "transformer", "bert")
CNNS = ("resnet50", "mobilenet_v2")
FP32 = "fp32"
TP_FP32 = "Torch-Pruning (fp32)"
LOADS: dict[str, str] = {}  # load average before each model's timing loop
PEERS = ("Torch-Pruning + ORT U8S8", "Torch-Pruning + ORT quantize_dynamic", "ORT quantize_dynamic")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    torch.set_num_threads(1)  # ORT has its own (1-thread) sessions; see pruning.py on why 1
    warnings.filterwarnings("ignore")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    tp = P._import_torch_pruning()
    started = time.time()
    rows: list[dict[str, Any]] = []
    for name in args.models:
        model_started = time.time()
        rows.extend(_bench_model(name, args, tp))
        say(f"{name}: done in {time.time() - model_started:.0f} s")
    text = _table(rows)
    print(text)
    say(f"total {time.time() - started:.0f} s")
    if args.write:
        argv = sys.argv[1:] if argv is None else argv
        write_section(_section(args, argv, text, tp), SECTION, RESULTS)
        say(f"wrote the {SECTION[3:]} section of {RESULTS}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), type=P._csv)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=16)
    parser.add_argument(
        "--importances",
        default="l2,reconstruction",
        type=P._csv,
        help="graphopt prune importances at the MACs target, one row each",
    )
    parser.add_argument(
        "--latency-aware",
        default="l2,reconstruction",
        type=P._csv,
        help="graphopt prune importances at the MACs target with selection latency_aware "
        "(per-layer ORT tables), one row each; '' for none",
    )
    parser.add_argument(
        "--latency-importance",
        default="l2",
        help="graphopt prune importance of the equal-latency row",
    )
    parser.add_argument("--seq", type=int, default=128, help="transformers' sequence length")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--calibration-batch", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30, help="timed calls per session, per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing loops (order rotated)"
    )
    parser.add_argument("--bisect", type=int, default=10, help="Torch-Pruning ratio search steps")
    parser.add_argument("--repeats", type=int, default=1, help="Torch-Pruning prune timings")
    parser.add_argument("--no-pt2e", action="store_true", help="leave PT2E out")
    parser.add_argument("--write", action="store_true", help="write the RESULTS.md section")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {list(MODELS)}")
    return args


# ---- models ----------------------------------------------------------------------------------
class _Logits(nn.Module):
    """A HF classifier whose forward returns its logits tensor (graphopt compares tensors)."""

    def __init__(self, model: nn.Module, vocab_size: int) -> None:
        super().__init__()
        self.model = model
        self.vocab_size = vocab_size  # what Q._samples draws token ids from

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids).logits


def _build(name: str, args: argparse.Namespace) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    if name in CNNS:
        return get_model(name, seed=0, input_shape=(1, 3, 224, 224))
    if name == "transformer":
        return get_model(name, seed=0, input_shape=(1, args.seq))
    import transformers

    config = transformers.BertConfig(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        vocab_size=30522,
        max_position_embeddings=max(512, args.seq),
        num_labels=10,
    )
    torch.manual_seed(0)
    model = _Logits(transformers.BertForSequenceClassification(config), config.vocab_size).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (1, args.seq), generator=generator)
    return model, (ids,)


# ---- one model -------------------------------------------------------------------------------
def _bench_model(name: str, args: argparse.Namespace, tp: Any) -> list[dict[str, Any]]:
    model, inputs = _build(name, args)
    cnn = name in CNNS
    calibration = Q._samples(model, inputs, args.calibration_samples, args.calibration_batch, 1)
    held_out = Q._samples(model, inputs, args.held_out, 1, 1000)
    work = tempfile.TemporaryDirectory(prefix=f"pipeline-bench-{name}-")
    folder = Path(work.name)
    gm = trace(model, inputs)
    base_macs = analyze(gm).macs
    runs = ToolRuns(name)
    sessions, rows = runs.sessions, runs.rows

    def add(tool: str, make: Callable[[], tuple[Any, dict[str, Any]]]) -> None:
        row = runs.add(tool, make)
        if "error" not in row:
            row["macs_pct"] = row.get("macs", base_macs) / base_macs

    scheme = "int8" if cnn else "dynamic"
    fp32_path = folder / "fp32.onnx"
    add(FP32, lambda: Q._graphopt_session(gm, inputs, fp32_path, None, {}))
    for importance in args.importances:
        add(
            f"graphopt prune {importance} + quantize {scheme}",
            lambda i=importance: _pipeline(
                gm, inputs, calibration, args, folder / f"graphopt_{i}.onnx", scheme,
                target_macs=args.target_macs, importance=i,
            ),
        )  # fmt: skip
    precision = "int8" if scheme == "int8" else "fp32"  # tables of the layers as deployed
    for importance in args.latency_aware:
        add(
            f"graphopt prune {importance} latency_aware ({precision} tables) + quantize {scheme}",
            lambda i=importance: _pipeline(
                gm, inputs, calibration, args, folder / f"graphopt_{i}_latency_aware.onnx",
                scheme, layer_latency=_tables(), target_macs=args.target_macs, importance=i,
                selection="latency_aware", latency_precision=precision,
            ),
        )  # fmt: skip

    say(f"{name}: Torch-Pruning, searching the ratio")
    try:
        if name == "bert":
            tp_model, tp_seconds, tp_detail = _tp_bert_for_macs(tp, model, inputs, args, base_macs)
        else:
            tp_model, seconds, tp_detail = P._tp_for_macs(
                tp, model, inputs, args, base_macs, global_pruning=True
            )
            tp_seconds = seconds["pass"]
        tp_macs = analyze(trace(tp_model, inputs)).macs
    except Exception as exc:
        tp_model = None
        error = one_line(exc) + _tp_probe(tp, model, inputs, args)
        rows["Torch-Pruning"] = {"model": name, "tool": "Torch-Pruning", "error": error}
        say(f"{name}: Torch-Pruning failed: {rows['Torch-Pruning']['error']}")
    if tp_model is not None:
        tp_path = folder / "tp_fp32.onnx"

        def then(make: Callable[[], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
            """A tool on Torch-Pruning's result: its MACs, and the prune time added."""
            session, facts = make()
            seconds = tp_seconds + (facts["seconds"] or 0.0)
            return session, {**facts, "macs": tp_macs, "seconds": seconds}

        add(
            TP_FP32,
            lambda: then(
                lambda: Q._graphopt_session(tp_model, inputs, tp_path, None, {"tp": tp_detail})
            ),
        )

        if TP_FP32 in sessions and cnn:
            for kind in ("U8S8", "S8S8"):
                add(
                    f"Torch-Pruning + ORT {kind}",
                    lambda k=kind: then(lambda: Q._ort_static(tp_path, calibration, k, folder)),
                )
        elif TP_FP32 in sessions:
            add(
                "Torch-Pruning + ORT quantize_dynamic",
                lambda: then(lambda: IT._ort_dynamic(tp_path, folder / "tp_dynamic.onnx")),
            )
        if cnn and not args.no_pt2e:
            split = name.startswith("resnet")  # reused ReLUs: see quantization.py's _PerCall
            add(
                "Torch-Pruning + PT2E X86Inductor" + (", modules split" if split else ""),
                lambda: then(lambda: Q._pt2e(tp_model, inputs, calibration, folder, split=split)),
            )
    if not cnn and FP32 in sessions:  # quantization alone, for the unpruned peer
        add(
            "graphopt quantize dynamic (no pruning)",
            lambda: _quantize_only(gm, inputs, calibration, folder / "graphopt_dynamic.onnx"),
        )
        add(
            "ORT quantize_dynamic",
            lambda: IT._ort_dynamic(fp32_path, folder / "ort_dynamic.onnx"),
        )

    if FP32 in sessions and TP_FP32 in sessions:
        ratio, per_round = _latency_ratio(sessions[FP32], sessions[TP_FP32], inputs, args)
        say(f"{name}: Torch-Pruning fp32 / original fp32 latency {ratio:.3f} ({per_round})")
        tables = _tables()
        target = min(ratio, 1.0)
        add(
            f"graphopt @ Torch-Pruning latency + quantize {scheme}",
            lambda: _pipeline(
                gm, inputs, calibration, args, folder / "graphopt_latency.onnx", scheme,
                layer_latency=tables, target_latency=target, importance=args.latency_importance,
                extra={"latency": f"target_latency={target:.3f} (TP fp32 / fp32, rounds "
                       f"{per_round})"},
            ),
        )  # fmt: skip

    say(f"{name}: fidelity on {args.held_out} held-out samples")
    reference = [Q._run(sessions[FP32], x)[0] for x in held_out]
    for tool, session in sessions.items():
        rows[tool].update(Q._fidelity(reference, [Q._run(session, x)[0] for x in held_out]))
    LOADS[name] = load_average()
    say(
        f"{name}: timing {len(sessions)} sessions interleaved, {args.rounds} round(s); "
        f"load average {LOADS[name]}"
    )
    rounds = _time(sessions, inputs, args.rounds, args.warmup, args.runs)
    peer = next((p for p in PEERS if p in sessions), None)
    for tool in sessions:
        ratios = [r[FP32].median_ms / r[tool].median_ms for r in rounds]
        rows[tool].update(
            ms=statistics.median(r[tool].median_ms for r in rounds),
            speedup=statistics.median(ratios),
            speedup_range=(min(ratios), max(ratios)),
        )
        if peer:
            rows[tool]["peer"] = peer
            rows[tool]["vs_peer"] = statistics.median(
                r[tool].median_ms / r[peer].median_ms for r in rounds
            )
    sessions.clear()
    work.cleanup()
    return list(rows.values())


def _tables() -> Any:
    """Per-layer ORT latency at the benchmark's session settings (cached on disk)."""
    from graphopt.backends.layer_latency import OrtLayerLatency

    return OrtLayerLatency(intra_op_threads=1)


def _pipeline(
    gm: Any,
    inputs: tuple[torch.Tensor, ...],
    calibration: list,
    args: argparse.Namespace,
    path: Path,
    scheme: str,
    *,
    layer_latency: Any = None,
    extra: dict[str, str] | None = None,
    **prune: Any,
) -> tuple[Any, dict[str, Any]]:
    """fold_batchnorm → prune → quantize through the pass manager; the ORT session, facts."""
    context = PassContext(inputs, {"calibration": calibration}, layer_latency=layer_latency)
    passes = [get_pass("fold_batchnorm"), get_pass("prune", round_to=args.round_to, **prune)]
    started = time.perf_counter()
    pruned = PassManager(passes).run(gm, inputs, context=context)
    prune_s = time.perf_counter() - started
    macs = analyze(pruned.graph_module).macs  # the pruned fp32 graph, between the two runs
    options = {"observer": "minmax"} if scheme == "int8" else {"scheme": scheme}
    started = time.perf_counter()
    quantized = PassManager([get_pass("quantize", progress=False, **options)]).run(
        pruned.graph_module, inputs, context=context
    )
    quant_s = time.perf_counter() - started
    ps, qs = pruned.stages[-1].stats, quantized.stages[-1].stats
    detail = {
        **(extra or {}),
        "prune": f"{ps.get('pruned_groups')} of {ps.get('groups')} groups pruned",
        "times": f"prune {prune_s:.1f} s + quantize {quant_s:.1f} s",
        "quantize": f"{qs.get('layers_int8')} layers int8, {qs.get('layers_float')} float",
    }
    if "latency_after_ms" in ps:
        detail["predicted"] = (
            f"layers {ps['latency_before_ms']:.2f} → {ps['latency_after_ms']:.2f} ms predicted, "
            f"latency tables of {ps.get('layers_measured', 0)} layers"
        )
    session, facts = Q._graphopt_session(
        quantized.graph_module, inputs, path, prune_s + quant_s, detail
    )
    return session, {**facts, "macs": macs}


def _quantize_only(
    gm: Any, inputs: tuple[torch.Tensor, ...], calibration: list, path: Path
) -> tuple[Any, dict[str, Any]]:
    """graphopt's ``quantize`` (scheme dynamic) alone, through the pass manager."""
    context = PassContext(inputs, {"calibration": calibration})
    started = time.perf_counter()
    result = PassManager([get_pass("quantize", scheme="dynamic", progress=False)]).run(
        gm, inputs, context=context
    )
    seconds = time.perf_counter() - started
    stats = result.stages[-1].stats
    detail = {
        "quantize": f"{stats.get('layers_int8')} layers int8, {stats.get('layers_float')} float"
    }
    return Q._graphopt_session(result.graph_module, inputs, path, seconds, detail)


def _tp_probe(tp: Any, model: nn.Module, inputs: tuple, args: argparse.Namespace) -> str:
    """Why Torch-Pruning's search found nothing: the first error of one pruning at the
    target's ratio (pruned, run, captured), or '' if that one works."""
    try:
        pruned, _ = P._tp_prune(
            tp,
            model,
            inputs,
            pruning_ratio=1 - args.target_macs,
            round_to=args.round_to,
            global_pruning=True,
        )
        with torch.no_grad():
            pruned(*inputs)
        trace(pruned, inputs)
    except Exception as exc:
        return f" (at pruning_ratio={1 - args.target_macs:.2f}: {one_line(exc)})"
    return ""


def _tp_bert_for_macs(
    tp: Any, model: nn.Module, inputs: tuple, args: argparse.Namespace, base_macs: int
) -> tuple[nn.Module, float, str]:
    """Torch-Pruning's HF BERT set-up, its ratio bisected to the MACs target like
    ``P._tp_for_macs`` (the smallest ratio at or below the target; search not timed)."""

    def prune(ratio: float) -> tuple[nn.Module, float]:
        pruned = copy.deepcopy(model)
        attns = [m for m in pruned.modules() if hasattr(m, "query") and hasattr(m, "value")]
        num_heads = {
            getattr(a, p): a.num_attention_heads for a in attns for p in ("query", "key", "value")
        }
        started = time.perf_counter()
        pruner = tp.pruner.BasePruner(
            pruned,
            inputs[0],
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=ratio,
            global_pruning=True,
            round_to=args.round_to,
            ignored_layers=P._classifier(pruned),
            num_heads=num_heads,
            prune_num_heads=False,
            prune_head_dims=True,
        )
        pruner.step()
        for a in attns:  # as Torch-Pruning's HF example does after the step
            a.num_attention_heads = pruner.num_heads[a.query]
            a.attention_head_size = a.query.out_features // a.num_attention_heads
            a.all_head_size = a.query.out_features
        return pruned, time.perf_counter() - started

    goal = args.target_macs * base_macs
    lo, hi, best, errors = 0.0, 0.9, None, []
    search = time.perf_counter()
    for _ in range(args.bisect):
        ratio = (lo + hi) / 2
        try:
            pruned, seconds = prune(ratio)
            macs = analyze(trace(pruned, inputs)).macs
        except Exception as exc:  # a ratio that breaks the model: go lower
            errors.append(one_line(exc))
            hi = ratio
            continue
        if macs <= goal:
            hi, best = ratio, (pruned, seconds, ratio)
        else:
            lo = ratio
    if best is None:
        why = f": {errors[-1]}" if errors else ""
        raise RuntimeError(f"no ratio reached {args.target_macs:.0%} MACs{why}")
    pruned, seconds, ratio = best
    searched = time.perf_counter() - search
    detail = (
        f"pruning_ratio={ratio:.4f} (bisection, {args.bisect} trials, {searched:.0f} s, not "
        "counted); HF set-up: num_heads, prune_head_dims"
    )
    return pruned, seconds, detail


# ---- measurements ----------------------------------------------------------------------------
def _time(
    sessions: dict[str, Any], inputs: tuple, rounds: int, warmup: int, runs: int
) -> list[dict[str, Any]]:
    """``rounds`` interleaved loops over ``sessions``, each starting at the next session."""
    feeds = Q._numpy(inputs)
    fns = {tool: (lambda s=s: s.run(feeds)) for tool, s in sessions.items()}
    names, out = list(fns), []
    for k in range(rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        out.append(
            measure_interleaved({n: fns[n] for n in order}, batch_size=1, warmup=warmup, runs=runs)
        )
    return out


def _latency_ratio(
    original: Any, pruned: Any, inputs: tuple, args: argparse.Namespace
) -> tuple[float, str]:
    """Torch-Pruning fp32 / original fp32 ORT latency: median of per-round ratios."""
    rounds = _time({"a": original, "b": pruned}, inputs, args.rounds, args.warmup, args.runs)
    ratios = [r["b"].median_ms / r["a"].median_ms for r in rounds]
    return statistics.median(ratios), ", ".join(f"{x:.3f}" for x in ratios)


# ---- output ----------------------------------------------------------------------------------
def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | tool | MACs | ORT ms | speed-up vs fp32 (range) | vs peer | cosine (min) "
        "| top-1 | size MB | tool s | notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['tool']} | – | – | – | – | – | – | – | – | "
                f"failed: {r['error']} |"
            )
            continue
        if "ms" not in r:  # built, but not timed (should not happen)
            continue
        low, high = r["speedup_range"]
        seconds = "–" if r.get("seconds") is None else f"{r['seconds']:.1f}"
        vs = f"{r['vs_peer']:.2f}" if "vs_peer" in r else "–"
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['macs_pct']:.1%} | {r['ms']:.2f} | "
            f"{r['speedup']:.2f}× ({low:.2f}–{high:.2f}) | {vs} | {r['cosine']:.4f} "
            f"({r['cosine_min']:.4f}) | {r['top1']:.0%} | {r['bytes'] / 1e6:.1f} | {seconds} | "
            f"{'; '.join(str(v) for v in r.get('detail', {}).values())} |"
        )
    peers = {r["model"]: r["peer"] for r in rows if "peer" in r}
    if peers:
        lines += [
            "",
            "vs peer: the row's latency / the peer's (median of per-round ratios; < 1 faster); "
            "peer: " + ", ".join(f"{m} → {p}" for m, p in peers.items()) + ".",
        ]
    return "\n".join(lines)


def _section(args: argparse.Namespace, argv: list[str], text: str, tp: Any) -> str:
    command = shlex.join(["python", "benchmarks/pipeline.py", *argv])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}` ({stamp})  ",
            f"Machine: {Q._machine()}  ",  # with the load average at the end
            f"Versions: {versions_text()}; torch-pruning {P._version(tp)}  ",
            f"Method: per model, {args.target_macs:.0%} of the MACs, round_to {args.round_to}. "
            "graphopt: fold_batchnorm → prune (target_macs, importance "
            f"{', '.join(args.importances)}) → quantize (int8 QDQ, min-max, uint8 activations; "
            "scheme dynamic for the transformers), through the pass manager, compiled by its "
            "ORT backend. Torch-Pruning: global ranking, group L2, the classifier ignored, "
            "ratio bisected to the MACs target (search not counted), then ORT quantize_static "
            "(U8S8 and its default S8S8, after quant_pre_process) or PT2E X86InductorQuantizer "
            "on its result (quantize_dynamic for the transformers). The equal-latency row "
            "prunes with target_latency = Torch-Pruning's fp32 / the original's fp32 ORT "
            "latency (measured interleaved first; per-layer ORT tables; importance "
            f"{args.latency_importance}). Calibration: the same "
            f"{args.calibration_samples} seeded samples (batches of {args.calibration_batch}) "
            f"for every tool; fidelity on {args.held_out} other seeded samples, one at a time, "
            "against the fp32 ORT session (cosine of the logits, mean and min; top-1 "
            "agreement); random seeded weights, so fidelity is distance from fp32, not "
            "accuracy. Latency: batch 1, 1 intra-op thread, spinning off, all sessions of a "
            f"model round-robin in one loop (warm-up {args.warmup}, median of {args.runs}), "
            f"{args.rounds} rounds with the order rotated; medians over rounds, ratios as "
            "medians of per-round ratios. MACs by graphopt's analyze (quantized rows: their "
            "pruned fp32 model). Tool s: pruning + quantization, capture and export excluded "
            "(PT2E's includes its own capture). Load average before the timing, per model: "
            + "; ".join(f"{m} {v}" for m, v in LOADS.items())
            + ".",
            "",
            text,
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
