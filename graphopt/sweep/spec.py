"""The ``sweep:`` section of a recipe, declared once as options (validated, listed, in the schema).

    sweep:
      grid:                              # every combination (a Cartesian product)
        prune.target_macs: [0.3, 0.5, 0.7]
        quantize.scheme: [int8, mixed]
      # or random: {prune.ratio: {low: 0.2, high: 0.6}, quantize.scheme: [int8, mixed]}
      #    samples: 8, seed: 0           # draws of the random space
      budgets: ["macs_ratio >= 2"]       # the best variant is named for each
      resources: {num_cpus: 1}           # what one variant's Ray task reserves
      num_cpus: 2                        # a local Ray runtime's size (default: all cores)
      address: null                      # a Ray cluster (else RAY_ADDRESS, else local)

Keys address ``PASSNAME.option`` (the pass must appear once), ``passes[i].option`` (any pass),
a backend's ``BACKEND.option``, or the top-level recipe keys ``model``, ``seed``,
``input_shape``, ``evaluate`` and ``data``. This module only checks the section's shape; the
keys are resolved against the recipe by :mod:`graphopt.sweep.variants`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from graphopt.errors import RecipeError
from graphopt.options import Options, parse_options

__all__ = ["TOP_LEVEL_KEYS", "Range", "Resources", "SweepOptions", "parse_sweep"]

TOP_LEVEL_KEYS = ("model", "seed", "input_shape", "evaluate", "data")


class Range(Options):
    """A continuous axis of a random sweep: uniform in ``[low, high]`` (integers when both are)."""

    owner = "sweep.random"
    low: int | float  # both ints: integer draws (a channel count)
    high: int | float
    log: bool = Field(False, description="draw uniformly in log space (low > 0)")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"needs low <= high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low}")
        return self


class Resources(Options):
    """What one variant's Ray task reserves (Ray schedules no more tasks than these allow)."""

    owner = "sweep.resources"
    num_cpus: float = Field(1, gt=0, description="CPUs per variant (sets its OMP threads)")
    num_gpus: float = Field(0, ge=0, description="GPUs per variant")
    memory_mb: int | None = Field(None, ge=1, description="memory per variant, MB")


class SweepOptions(Options):
    """A recipe's ``sweep:``: which options vary, how variants run, what is chosen."""

    owner = "sweep"
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="KEY: [values]; every combination is a variant"
    )
    random: dict[str, Range | list[Any]] = Field(
        default_factory=dict, description="KEY: [choices] or {low, high}; `samples` draws"
    )
    samples: int = Field(8, ge=1, le=10_000, description="variants drawn from `random`")
    seed: int = Field(0, ge=0, description="seed of the random draws")
    budgets: list[str] = Field(
        default_factory=list, description="conditions; the best variant meeting each is named"
    )
    resources: Resources = Field(default_factory=Resources, description="per variant")
    num_cpus: int | None = Field(None, ge=1, description="local Ray runtime CPUs")
    address: str | None = Field(None, min_length=1, description="Ray cluster address")
    cache_dir: str | None = Field(None, min_length=1, description="variant cache folder")
    output: str | None = Field(None, min_length=1, description="sweep output folder")

    @model_validator(mode="after")
    def _one_space(self) -> SweepOptions:
        if self.grid and self.random:
            raise ValueError("give either grid or random, not both")
        if not self.grid and not self.random:
            raise ValueError("needs grid: {KEY: [values]} or random: {KEY: ...}")
        for key, values in self.grid.items():
            if not values:
                raise ValueError(f"grid axis {key!r} has no values")
        for key, choices in self.random.items():
            if isinstance(choices, list) and not choices:
                raise ValueError(f"random axis {key!r} has no choices")
        return self


def parse_sweep(data: Any, *, where: str = "sweep") -> SweepOptions:
    """The validated section; an error names the option (``sweep.samples: must be …``)."""
    if not isinstance(data, dict):
        raise RecipeError(
            f"{where} must be a mapping such as {{grid: {{prune.ratio: [0.3, 0.5]}}}}"
        )
    return parse_options(SweepOptions, data, where=where)
