"""The options of a distillation run, declared once: the ``recover`` pass's options and
``graphopt.recovery.distill``'s keyword arguments are this model."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from graphopt.options import Names, Options

__all__ = ["BN_MODES", "MODES", "OPTIMIZERS", "DistillConfig"]

OPTIMIZERS = ("adam", "sgd")
BN_MODES = ("train", "frozen")
MODES = ("max", "min")


class DistillConfig(Options):
    """Validated options of a distillation run (each error names its option)."""

    owner: ClassVar[str] = "distill"

    steps: int | None = Field(None, ge=1, description="optimizer steps (or epochs)")
    epochs: float | None = Field(None, gt=0, description="passes over train (or steps)")
    lr: float = Field(1e-3, gt=0, description="learning rate")
    optimizer: Literal[OPTIMIZERS] = Field("adam", description="adam or sgd")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    temperature: float = Field(4.0, gt=0, description="distillation temperature T")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the hard-label loss")
    features: Names = Field((), description="module paths whose outputs are matched (MSE)")
    feature_weight: float = Field(1.0, ge=0, description="weight of the feature loss")
    metric: str | None = Field(
        None, min_length=1, description="task metric key that picks the best checkpoint"
    )
    mode: Literal[MODES] = Field("max", description="max or min: the metric's direction")
    eval_every: int | None = Field(None, ge=1, description="steps between evaluations")
    bn: Literal[BN_MODES] = Field(
        "train", description="train: re-estimate BatchNorm statistics; frozen: keep them"
    )
    seed: int = Field(0, description="seed of the batch order")

    @model_validator(mode="after")
    def _one_budget(self) -> DistillConfig:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(
                f"give steps or epochs, not both (steps={self.steps!r}, epochs={self.epochs!r})"
            )
        return self
