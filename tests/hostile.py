"""Factories and task callables that misbehave, for the hostile-input tests of the CLI."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from graphopt.data import TaskData


def tiny() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3))
    return model.eval(), (torch.randn(1, 3, 8, 8),)


def three_tuple() -> tuple:
    model, inputs = tiny()
    return model, inputs, "extra"


def exits() -> None:
    sys.exit(3)


def raises() -> None:
    raise ValueError("the factory is broken")


def not_a_module() -> str:
    return "a string"


class _TextOutput(nn.Module):
    def forward(self, x: torch.Tensor) -> str:
        return "not a tensor"


def string_output() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    return _TextOutput().eval(), (torch.randn(2, 3),)


def sleeps() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Slow enough for a test to send SIGTERM while the run holds its staging folder; it
    leaves a marker file first (``GRAPHOPT_TEST_MARKER``) so a test can tell it was called."""
    marker = os.environ.get("GRAPHOPT_TEST_MARKER")
    if marker:
        Path(marker).write_text("called")
    time.sleep(60)
    return tiny()


def string_metric(model: nn.Module) -> str:
    return "high"


def nan_metric(model: nn.Module) -> float:
    return math.nan


def inf_calibration() -> TaskData:
    batches = [(torch.randn(2, 3, 8, 8),) for _ in range(4)]
    batches[2][0][0, 0, 0, 0] = math.inf
    return TaskData(calibration=batches)


def wrong_shape_calibration() -> TaskData:
    return TaskData(calibration=[(torch.randn(2, 5, 8, 8),)])


def wrong_dtype_calibration() -> TaskData:
    return TaskData(calibration=[(torch.ones(2, 3, 8, 8, dtype=torch.int64),)])


def data_raises() -> TaskData:
    raise RuntimeError("no data here")
