"""Provenance: exactly what produced an artifact (versions, machine, inputs, times, hashes).

A deployment job that ships a compressed model has to be able to say which code, which
libraries, which recipe and which inputs made it, on what machine, and that the file it ships
is the file that was measured. ``report.json`` carries all of it (see ``graphopt/schemas``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["input_signature", "machine", "now_iso", "sha256_file", "sha256_json", "versions"]

_DISTRIBUTIONS = {
    "graphopt": "graphopt",
    "torch": "torch",
    "numpy": "numpy",
    "onnx": "onnx",
    "onnxscript": "onnxscript",
    "onnxruntime": "onnxruntime",
    "tvm": "apache-tvm",
}


def versions() -> dict[str, str | None]:
    """Installed versions of graphopt and the libraries it ran on (None: not installed).

    Read from package metadata, so TVM is not imported (seconds) just to be named.
    """
    found: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in _DISTRIBUTIONS.items():
        try:
            found[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found


def machine() -> dict[str, Any]:
    """CPU model, cores, the threads torch used, OS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": _cpu_model(),
        "architecture": platform.machine(),
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """A hash of a JSON-able value that does not depend on key order or whitespace."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def input_signature(inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Shapes, dtypes and a sha256 over the example inputs' bytes."""
    digest = hashlib.sha256()
    for t in inputs:
        digest.update(t.detach().contiguous().cpu().numpy().tobytes())
    return {
        "shapes": [list(t.shape) for t in inputs],
        "dtypes": [str(t.dtype).removeprefix("torch.") for t in inputs],
        "sha256": digest.hexdigest(),
    }
