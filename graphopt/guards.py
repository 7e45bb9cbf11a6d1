"""Memory guards: refuse work that cannot fit, with one line naming the estimate.

Why: a 100000² example image asked torch for 120 GB and died with a raw allocation traceback;
a 6000² one ran for minutes. Two checks, both before the memory is touched: the example inputs'
own bytes before they are created, and the captured graph's peak activation memory (graphopt's
analysis simulates the execution order on shapes alone) before anything runs for real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from graphopt.errors import GraphoptError

__all__ = ["available_memory_bytes", "human_bytes", "require_memory", "tensor_bytes"]

# The pipeline holds a few copies of the activations at once (reference outputs, the stage
# under test, a backend's buffers); this many times the simulated peak must fit.
ACTIVATION_COPIES = 3


def available_memory_bytes() -> int:
    """Memory the process can still take: ``MemAvailable`` on Linux, else physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        return 2**63 - 1  # unknown: do not refuse


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype = torch.float32) -> int:
    """Bytes of a dense tensor of ``shape`` (computed without allocating it)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return math.prod(int(d) for d in shape) * itemsize


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def require_memory(needed: int, what: str) -> None:
    """Raise a one-line ``GraphoptError`` when ``needed`` bytes exceed the available memory."""
    available = available_memory_bytes()
    if needed > available:
        raise GraphoptError(
            f"{what} needs about {human_bytes(needed)}, more than the {human_bytes(available)} "
            "of memory available; use smaller example inputs (input_shape)"
        )
