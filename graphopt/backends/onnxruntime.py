"""ONNX Runtime backend: export the (traced, possibly rewritten) module to ONNX, run it on CPU.

Exporter choice: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript), not the
legacy TorchScript exporter. Measured on this project's inputs (torch 2.13, onnxruntime 1.32,
2-core Xeon, batch 1, ORT_ENABLE_ALL, medians interleaved in one loop):

- **Correctness decides it.** graphopt hands backends the ``GraphModule`` that
  ``torch.export`` produced. Its batch dimension is a SymInt that ``sym_size`` reads as a plain
  Python int, so ``jit.trace`` (the legacy exporter) bakes the example batch into every
  ``Reshape``: a transformer exported with batch 1 fails at batch 3 ("cannot reshape
  {3,128,256} to {1,128,4,64}"). The legacy exporter also refuses the module outright
  (``train()`` is not supported on ``ExportedProgram.module()``) unless it is wrapped. The
  dynamo exporter re-runs ``torch.export`` on the module, so it sees the current graph after any
  pass rewrote it and keeps the batch symbolic.
- **Speed is a wash on CNNs** (ResNet-like: both 25 ORT nodes after fusion, legacy/dynamo
  latency 0.998-0.999 over three interleaved rounds). On transformers the legacy graph was 2-4 %
  faster (4 layers, d=256, seq 128) and 10-12 % (2 layers, d=128, seq 32), but mostly because
  its batch was baked in (no Shape/Slice/Concat chains, Gemm instead of MatMul+Add): a dynamo
  export with a static batch closed about two thirds of the small model's gap. The rest at
  opset 18 is GELU: ONNX has no Gelu op before opset 20 and ORT does not fuse the dynamo
  exporter's erf pattern into BiasGelu. Opset 20 gets BiasGelu (5-9 % faster than 18) and opset
  23 also emits the ONNX ``Attention`` op (9-14 % faster than 18; 48 instead of 82 ORT nodes on
  the zoo transformer), so pass ``opset=23`` for attention models. The default stays 18, the
  oldest opset the dynamo exporter emits natively: its down-conversion to 17 produced an
  invalid ``Split`` (``num_outputs`` is an opset-18 attribute) that ORT refused to load.
- Export takes longer (about 1.5-4 s vs 0.1-0.8 s for the legacy exporter), paid once.

Runtime choice: ORT's intra-op threads spin after each call by default. In an interleaved
benchmark those spinning threads steal the cores from whatever runs next: torch eager went from
10.6 ms to 38.6 ms on a ResNet-like model when interleaved with a spinning ORT session, and
stayed at 10.7 ms beside a non-spinning one, which itself kept its 4.5-4.7 ms. So spinning is
off unless ``allow_spinning=True`` (worth it only when ORT has the cores to itself).

Fusion choice: ORT's ``SkipLayerNormFusion`` is off by default (``disabled_optimizers``). It
folds ``Add → LayerNormalization`` (every transformer block's residual, twice) into the
contrib ``SkipLayerNormalization`` op, whose CPU kernel in ORT 1.32 is 7-8x slower than the
two ops it replaces. Measured on this 2-core AVX-512 machine, 12 × (Add + LayerNormalization)
per graph, median of 50 calls: 128 × 384 rows 244 µs fused vs 32 µs unfused per norm, 128 × 768
483 vs 59, 8 × 768 31 vs 5, 1024 × 384 1935 vs 246, at 1 and at 2 threads alike. On real
all-MiniLM-L6-v2 (seq 128, 1 thread, opset 23) it costs 2.5 ms a call: fp32 31.3 → 28.9 ms,
dynamic int8 13.4 → 10.8 ms. Every other ORT fusion was within ±0.2 % when disabled
alone (``MatMulIntegerToFloatFusion`` −6 %: it stays on). Pass ``disabled_optimizers=[]`` for
ORT's own defaults.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import importlib.util
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from graphopt.backends.base import describe_model
from graphopt.capture import as_input_tuple, at_least_batch_two
from graphopt.errors import BackendError, BackendUnavailableError
from graphopt.options import Configurable, Options
from graphopt.shapes import (
    declared_shapes,
    describe,
    explain_constraint_violation,
    export_dynamic_shapes,
)

__all__ = ["SLOW_FUSIONS", "OnnxRuntimeBackend", "OnnxRuntimeCompiled", "export_onnx_file"]

_OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_MIN_OPSET = 17
_EXTERNAL_DATA_BYTES = 1_500_000_000  # protobuf caps one file at 2 GiB
_EXPORTER = "torch.onnx.export(dynamo=True)"
# ORT fusions whose CPU kernel measured slower than the ops they replace (module docstring).
SLOW_FUSIONS = ("SkipLayerNormFusion",)


class OnnxRuntimeCompiled:
    """An ORT InferenceSession plus the files it came from (kept alive with this object)."""

    backend = "onnxruntime"

    def __init__(
        self,
        session: Any,
        info: dict[str, Any],
        scratch: tempfile.TemporaryDirectory[str],
    ) -> None:
        self._session = session
        self._input_names = [i.name for i in session.get_inputs()]
        self._scratch = scratch  # deleting this object deletes the temporary ONNX file
        self.info = info

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self._input_names):
            raise BackendError(
                f"onnxruntime: the model takes {len(self._input_names)} inputs "
                f"({', '.join(self._input_names)}), got {len(inputs)}; pass one array per input"
            )
        feeds = dict(zip(self._input_names, inputs, strict=True))
        try:
            return list(self._session.run(None, feeds))
        except Exception as exc:
            raise BackendError(
                f"onnxruntime: running {self.info.get('model', 'the model')} failed: "
                f"{_first_line(exc)}. Check the input shapes and dtypes against "
                f"{self.info.get('input_shapes')}"
            ) from exc


class OnnxRuntimeBackend(Configurable):
    """Export to ONNX with the dynamo exporter and run with ONNX Runtime's CPU provider.

    ``opset`` must be >= 17. ``intra_op_threads=None`` keeps ORT's default (one per physical
    core). ``optimization`` is one of disable/basic/extended/all. ``onnx_path`` keeps the
    exported file there; otherwise it lives in a temporary folder that is removed when the
    compiled model is garbage-collected. ``allow_spinning`` is off for fair interleaved timing
    (see the module docstring).
    """

    name = "onnxruntime"

    class Options(Options):
        opset: int = Field(18, ge=_MIN_OPSET, description="ONNX opset of the export")
        intra_op_threads: int | None = Field(
            None, ge=1, description="ORT intra-op threads (None: one per physical core)"
        )
        optimization: Literal[tuple(_OPTIMIZATION_LEVELS)] = Field(
            "all", description="ORT graph optimization level"
        )
        onnx_path: str | Path | None = Field(None, description="keep the exported file here")
        allow_spinning: bool = Field(False, description="ORT thread spinning (off: fair timing)")
        disabled_optimizers: list[str] = Field(
            default_factory=lambda: list(SLOW_FUSIONS),
            description="ORT graph transformers left off (default: the ones measured slower)",
        )

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.onnx_path = Path(self.onnx_path) if self.onnx_path is not None else None

    def compile(
        self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]
    ) -> OnnxRuntimeCompiled:
        """Export ``model`` (batch dimension symbolic where the model allows) and load it in ORT."""
        ort = _require_runtime()
        inputs = as_input_tuple(example_inputs, error=BackendError)
        model_name = describe_model(model)
        scratch = tempfile.TemporaryDirectory(prefix="graphopt-ort-")
        path = self.onnx_path or Path(scratch.name) / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        dynamic, dynamic_note = export_onnx_file(model, inputs, path, self.opset, model_name)
        optimized = Path(scratch.name) / "optimized.onnx"
        session = self._session(ort, path, optimized, model_name)
        info: dict[str, Any] = {
            "model": model_name,
            "onnx_path": str(path),
            "opset": self.opset,
            "exporter": _EXPORTER,
            "dynamic_batch": dynamic,
            "dynamic_dims": describe(declared_shapes(model)),
            "optimization": self.optimization,
            "intra_op_threads": self.intra_op_threads,
            "allow_spinning": self.allow_spinning,
            "disabled_optimizers": list(self.disabled_optimizers),
            "input_shapes": [list(i.shape) for i in session.get_inputs()],
            "onnxruntime_version": ort.__version__,
            **_optimized_graph_facts(optimized),
        }
        if dynamic_note:
            info["dynamic_batch_note"] = dynamic_note
        return OnnxRuntimeCompiled(session, info, scratch)

    def layer_latency(self) -> Any:
        """Single-layer latency on this backend's settings, cached per machine (for
        ``prune: {target_latency: …}``; ``graphopt.backends.layer_latency``)."""
        _require_runtime()
        from graphopt.backends.layer_latency import OrtLayerLatency

        return OrtLayerLatency(
            intra_op_threads=self.intra_op_threads,
            optimization=_OPTIMIZATION_LEVELS[self.optimization],
        )

    def _session(self, ort: Any, path: Path, optimized: Path, model_name: str) -> Any:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPTIMIZATION_LEVELS[self.optimization]
        )
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = self.intra_op_threads or 0
        options.log_severity_level = 3  # the "optimized model is hardware specific" warning
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.allow_spinning else "0"
        )
        # Writing the optimized graph costs one serialisation; weights go to a side file so
        # that counting its nodes reads only the small graph proto.
        options.optimized_model_filepath = str(optimized)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", optimized.name + ".data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
        try:
            return ort.InferenceSession(
                str(path),
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=list(self.disabled_optimizers),
            )
        except Exception as exc:
            hint = (
                "opset 17 is a down-conversion by the exporter; try opset=18"
                if self.opset < 18
                else "check onnx.checker.check_model on the file and report the failing node"
            )
            raise BackendError(
                f"onnxruntime: could not load the ONNX export of {model_name} ({path}, opset "
                f"{self.opset}): {_first_line(exc)}. How to proceed: {hint}"
            ) from exc


def _require_runtime() -> Any:
    """Import onnxruntime (and check the exporter's deps) only when a model is compiled."""
    for module, package in (
        ("onnxruntime", "onnxruntime"),
        ("onnx", "onnx"),
        ("onnxscript", "onnxscript"),
    ):
        if importlib.util.find_spec(module) is None:
            raise BackendUnavailableError(
                f"the onnxruntime backend needs the '{module}' package, which is not installed; "
                f"install it with `pip install {package}` (or `pip install onnxruntime onnx "
                "onnxscript`)"
            )
    return importlib.import_module("onnxruntime")


def export_onnx_file(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    model_name: str,
) -> tuple[bool, str | None]:
    """Export with a symbolic batch; fall back to the example's static shapes if it must.

    Export specialises size-1 dimensions, so a batch of 1 is repeated to 2 (as ``trace``
    does). A model whose graph hard-codes its batch (e.g. a reshape a pass wrote with a
    constant) cannot take a batch of 2; it is then exported with the example shapes as they
    are, and the returned note says why. Dimensions the user declared dynamic at capture
    (``graphopt.shapes``) have no such fallback: an export that cannot keep them is an error.
    """
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > _EXTERNAL_DATA_BYTES
    batched = tuple(at_least_batch_two(t) for t in inputs)
    declared = declared_shapes(model)
    dims = export_dynamic_shapes(declared, batched, dynamic_batch=True)
    try:
        _onnx_export(model, batched, path, opset, external, dims)
    except Exception as dynamic_exc:
        if declared:
            names = ", ".join(sorted({d["name"] for d in describe(declared)}))
            cause = _root_cause(dynamic_exc)
            why = explain_constraint_violation(cause) or f"{type(cause).__name__}: " + (
                _first_line(cause)
            )
            raise BackendError(
                f"onnxruntime: could not export {model_name} with its declared dynamic "
                f"dimensions ({names}): {why}"
            ) from dynamic_exc
        try:
            _onnx_export(model, inputs, path, opset, external, None)
        except Exception:
            raise BackendError(_explain_export_failure(model_name, opset, dynamic_exc)) from (
                dynamic_exc
            )
        cause = _root_cause(dynamic_exc)
        note = f"batch kept static: {type(cause).__name__}: {_first_line(cause)}"
        warnings.warn(
            f"onnxruntime: {model_name} exported with a static batch ({note})", stacklevel=3
        )
        return False, note
    if declared:
        _require_symbolic(path, declared, model_name)
    if not _first_dim_symbolic(path):
        return False, "the graph fixes its batch size (traced with dynamic_batch=False?)"
    return True, None


def _require_symbolic(path: Path, declared: Any, model_name: str) -> None:
    """Every declared dimension is a ``dim_param`` of the exported graph's input."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for entry in describe(declared):
        dims = graph.input[entry["input"]].type.tensor_type.shape.dim
        if not dims[entry["dim"]].HasField("dim_param"):
            raise BackendError(
                f"onnxruntime: the ONNX export of {model_name} fixed input {entry['input']}'s "
                f"dimension {entry['dim']} ({entry['name']}) at {dims[entry['dim']].dim_value}"
            )


def _onnx_export(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    opset: int,
    external: bool,
    dynamic_shapes: tuple[dict[int, Any] | None, ...] | None,
) -> None:
    """``torch.onnx.export`` with attention's fake kernel pinned to the math one.

    Why: the exporter infers strides twice, when it decomposes the graph and again when it
    inserts type promotions, and ``scaled_dot_product_attention`` can pick a different CPU
    kernel each time (flash, whose output is laid out ``[B, S, H, D]``, then math, which is
    contiguous) when its mask depends on the input. A ``transpose(1, 2).reshape(…)`` after it
    is turned into a ``view`` the first time and fails the second ("Cannot view a tensor with
    shape …"): every T5, BEiT and Swin failed so, pruned or not. The kernel choice changes
    only the strides of the fake tensors; the ONNX graph (one attention translation) is the
    same, so pinning it costs nothing.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with _quiet_exporter(isinstance(model, torch.fx.GraphModule)), sdpa_kernel(SDPBackend.MATH):
        torch.onnx.export(
            model,
            inputs,
            str(path),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            external_data=external,
            verbose=False,
            optimize=True,
        )
    _lower_weight_only(model, path)  # weight-only int4/int8 linears → MatMulNBits, first
    if not external:  # graphopt's ONNX lowerings, one hook each (a no-op for other files)
        _lower_dynamic_int8(path)
    _clean(path)


def _clean(path: Path) -> None:
    """The exporter's debugging metadata and stale shapes out of the file (``onnx_cleanup``)."""
    from graphopt.backends.onnx_cleanup import clean_exported_file

    clean_exported_file(path)


def _lower_dynamic_int8(path: Path) -> None:
    """Dynamic int8 (``quantize: {scheme: dynamic}``) as MatMulInteger for ORT's fusions."""
    from graphopt.backends.onnx_dynamic_int8 import lower_dynamic_int8

    lower_dynamic_int8(path)


def _lower_weight_only(model: nn.Module, path: Path) -> None:
    """``quantize_weights`` linears as ``com.microsoft.MatMulNBits`` (``onnx_nbits``)."""
    from graphopt.backends.onnx_nbits import lower_weight_only

    lower_weight_only(model, path)


@contextlib.contextmanager
def _quiet_exporter(graph_module: bool) -> Iterator[None]:
    """Silence exporter noise that says nothing about this model.

    The 'torchvision is not installed' lines are logged once per process; export's own error
    log repeats what the raised exception (which we report) says. A GraphModule from
    ``ExportedProgram.module()`` reports ``training=True`` although its graph was captured in
    the mode the user chose, so the exporter's training-mode warning is wrong for it.
    """
    loggers = [
        logging.getLogger("torch.onnx._internal.exporter._registration"),
        logging.getLogger("torch.export._trace"),
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            if graph_module:
                warnings.filterwarnings("ignore", message="Exporting a model while it is in train")
            # Inputs sharing a declared name (ids and mask: "seq") are one symbol; the exporter
            # says it names the axis once, which is what was asked for.
            warnings.filterwarnings("ignore", message="# The axis name")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_dim_symbolic(path: Path) -> bool:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = [i.type.tensor_type.shape.dim for i in graph.input]
    return bool(dims) and all(len(d) == 0 or d[0].HasField("dim_param") for d in dims)


def _optimized_graph_facts(optimized: Path) -> dict[str, Any]:
    """Node count and op histogram of the graph ORT will execute, when ORT wrote it out."""
    if not optimized.exists():
        return {}
    import onnx

    try:
        graph = onnx.load(str(optimized), load_external_data=False).graph
    except Exception:  # the count is a nicety for the report, never a reason to fail
        return {}
    finally:  # the session is built; the copy on disk would only double the model's footprint
        for leftover in (optimized, optimized.with_name(optimized.name + ".data")):
            leftover.unlink(missing_ok=True)
    ops = collections.Counter(node.op_type for node in graph.node)
    return {"ort_optimized_nodes": len(graph.node), "ort_op_counts": dict(ops.most_common())}


_NODE_RE = re.compile(r"(?:translating node|While executing) %(\w+)")
_OP_RE = re.compile(r"OpOverload\(op='([\w.]+)'")


def _explain_export_failure(model_name: str, opset: int, exc: BaseException) -> str:
    """One line: which model, which FX node/op, the innermost cause, and what to do."""
    chain = _cause_chain(exc)
    text = "\n".join(str(e) for e in chain)
    node = _NODE_RE.search(text)
    op = _OP_RE.search(text)
    where = ""
    if node or op:
        parts = [f"node %{node.group(1)}" if node else "", f"op {op.group(1)}" if op else ""]
        where = " at " + ", ".join(p for p in parts if p)
    innermost = chain[-1]
    if op:
        hint = (
            "give the op an ONNX translation (torch.onnx.export custom_translation_table) or "
            "replace it with standard ATen ops before compiling"
        )
    else:
        hint = "check that torch.export.export(model, inputs) succeeds, then simplify that node"
    return (
        f"onnxruntime: could not export {model_name} to ONNX (opset {opset}, {_EXPORTER}){where}: "
        f"{type(innermost).__name__}: {_first_line(innermost)}. How to proceed: {hint}"
    )


def _cause_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


def _root_cause(exc: BaseException) -> BaseException:
    return _cause_chain(exc)[-1]


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if line:
            return line[:300]
    return type(exc).__name__
