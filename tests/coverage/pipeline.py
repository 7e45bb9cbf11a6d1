"""The whole pipeline on one registry entry, and what it did: the record of one coverage row.

fold_batchnorm → prune(target_macs=0.7) → low_rank(svd, ratio 0.5) → quantize(int8) through
``graphopt.runner.compress``, then the compressed graph on ONNX Runtime against the same graph
in torch. Shared by ``tests/coverage/test_thirdparty_pipeline.py`` (which asserts on it) and
``benchmarks/coverage.py`` (which tabulates it), so both judge the same run.

A failure is a result, not a crash: ``Outcome.status`` is ``"ok"`` or the stage that failed
(``capture``, a pass name or ``onnxruntime``) and ``error`` its one-line message. The stage is
read from graphopt's typed errors (``PassError`` names its pass), else from the innermost
graphopt frame of the traceback, because an unexpected exception inside a pass is exactly the
kind of bug this suite is for and must still be attributed.
"""

from __future__ import annotations

import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import graphopt
from graphopt.backends import get_backend
from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import relative_diff
from graphopt.errors import BackendError, CaptureError, PassError
from graphopt.loading import load_data
from graphopt.passes import Pass, get_pass
from graphopt.runner import compress
from tests.coverage.architectures import Architecture

__all__ = ["PASSES", "Outcome", "pipeline", "run_pipeline"]

PASSES = ("fold_batchnorm", "prune", "low_rank", "quantize")


def pipeline() -> list[Pass]:
    """The passes of the coverage run, fresh instances (a pass holds no state, but be safe)."""
    return [
        get_pass("fold_batchnorm"),
        get_pass("prune", target_macs=0.7),
        get_pass("low_rank", method="svd", ratio=0.5),
        get_pass("quantize", calibration={"samples": 16}, progress=False),
    ]


@dataclass(frozen=True)
class Outcome:
    """One model through the pipeline: what each stage did, or where and why it stopped."""

    name: str
    family: str
    source: str
    status: str  # "ok", or the stage that failed
    error: str = ""
    modified: tuple[str, ...] = ()
    macs_kept: float | None = None  # compressed / original MACs (the graph after quantize)
    params_kept: float | None = None
    frozen: tuple[tuple[str, str], ...] = ()  # (group, reason) of fully frozen groups
    groups: int = 0
    pruned_groups: int = 0
    ort_max_diff: float | None = None  # ORT vs the compressed graph in torch
    latency_ms: tuple[float, float] | None = None  # ORT original → compressed (with latency)
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_row(self) -> dict[str, Any]:
        """JSON-friendly form (the benchmark's subprocesses hand it back this way)."""
        row = dict(self.__dict__)
        row["modified"] = list(self.modified)
        row["frozen"] = [list(f) for f in self.frozen]
        row["latency_ms"] = list(self.latency_ms) if self.latency_ms else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Outcome:
        row = dict(row)
        row["modified"] = tuple(row["modified"])
        row["frozen"] = tuple(tuple(f) for f in row["frozen"])
        row["latency_ms"] = tuple(row["latency_ms"]) if row["latency_ms"] else None
        return cls(**row)


def run_pipeline(arch: Architecture, *, latency: bool = False, runs: int = 2) -> Outcome:
    """Build ``arch``, compress it, check the compressed graph on ONNX Runtime.

    Without ``latency`` only the compressed graph is exported (one ONNX export, the slowest
    step of the run); with it ``compress`` also times original and compressed on ORT,
    interleaved (``runs`` runs, one warm-up) and the diff is the report's.
    """
    started = time.perf_counter()
    head = {"name": arch.name, "family": arch.family, "source": arch.source}
    stage = "build"
    try:
        model, inputs = arch.build()
        stage = "capture"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = compress(
                model,
                inputs,
                pipeline(),
                backends=[get_backend("onnxruntime")] if latency else (),
                data=load_data("random", inputs),
                warmup=1,
                runs=runs,
                name=arch.name,
            )
            stage = "onnxruntime"
            if latency:
                measured = run.report.latencies[0]
                diff, times = measured.max_rel_diff, (measured.original_ms, measured.compressed_ms)
            else:
                diff, times = _ort_diff(run.compressed, run.example_inputs), None
    except Exception as exc:
        return Outcome(
            **head,
            status=_failed_stage(exc, stage),
            error=_one_line(exc),
            seconds=time.perf_counter() - started,
        )
    report = run.report
    stages = {s.name: s for s in report.stages}
    prune = stages["prune"].stats
    return Outcome(
        **head,
        status="ok",
        modified=tuple(s.name for s in report.stages if s.modified),
        macs_kept=report.compressed.macs / max(report.original.macs, 1),
        params_kept=report.compressed.params / max(report.original.params, 1),
        frozen=tuple((f["group"], f["reason"]) for f in prune.get("frozen", ())),
        groups=int(prune.get("groups", 0)),
        pruned_groups=int(prune.get("pruned_groups", 0)),
        ort_max_diff=float(diff),
        latency_ms=times,
        seconds=time.perf_counter() - started,
        stage_seconds={s.name: round(s.seconds, 3) for s in report.stages[1:]},
    )


def _ort_diff(gm: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """ORT's output against the same (compressed) graph run by torch: the backend round trip."""
    compiled = get_backend("onnxruntime").compile(gm, tuple(inputs))
    with torch.no_grad():
        expected = flat_torch_outputs(gm(*inputs))
    return relative_diff(expected, compiled.run(to_numpy_inputs(inputs)))


_PACKAGE = Path(graphopt.__file__).resolve().parent
_STAGE_OF_PACKAGE = {  # graphopt sub-packages whose code runs inside one pass
    "pruning": "prune",
    "lowrank": "low_rank",
    "quant": "quantize",
    "backends": "onnxruntime",
}
_STAGE_OF_PASS_FILE = {
    "fold_batchnorm": "fold_batchnorm",
    "prune_channels": "prune",
    "low_rank": "low_rank",
    "quantize": "quantize",
}


def _failed_stage(exc: BaseException, stage: str) -> str:
    """The stage an exception came from: a typed error's, else the innermost graphopt frame."""
    if isinstance(exc, PassError):
        return exc.pass_name.split(" ")[0]
    if isinstance(exc, CaptureError):
        return "capture"
    if isinstance(exc, BackendError):
        return "onnxruntime"
    if stage != "capture":  # building the model or exporting the result
        return stage
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if not path.is_relative_to(_PACKAGE):
            continue
        parts = path.relative_to(_PACKAGE).parts
        if parts[0] == "passes" and path.stem in _STAGE_OF_PASS_FILE:
            return _STAGE_OF_PASS_FILE[path.stem]
        if parts[0] in _STAGE_OF_PACKAGE:
            return _STAGE_OF_PACKAGE[parts[0]]
        if parts[0] in ("capture.py", "loading.py"):
            return "capture"
    return "pipeline"


def _one_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip():
            return f"{type(exc).__name__}: {line.strip()[:300]}"
    return type(exc).__name__
