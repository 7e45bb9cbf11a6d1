"""The user's task metric: calling an evaluation function safely, once per model or stage."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from torch import nn

from graphopt.errors import GraphoptError

__all__ = ["EvalFn", "evaluate_metric", "inference_flags"]

EvalFn = Callable[[nn.Module], "float | dict[str, float]"]


def evaluate_metric(evaluate: EvalFn, model: nn.Module) -> dict[str, float]:
    """Call the user's evaluation function; its failure is reported with its traceback once."""
    try:
        value: Any = evaluate(model)
    except GraphoptError:
        raise
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc)).rstrip()
        raise GraphoptError(
            f"the evaluation function raised {type(exc).__name__}: {exc}\n{tb}"
        ) from exc
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    return {"metric": float(value)}


def inference_flags(model: nn.Module) -> Callable[[], None]:
    """Clear every submodule's ``training`` flag; return how to restore them.

    The flags are set directly, never through ``eval()``, which the GraphModule of
    ``torch.export`` refuses (there the flag is ignored: its graph is already in eval form).
    """
    flags = [(m, m.training) for m in model.modules()]
    for module, _ in flags:
        module.training = False

    def restore() -> None:
        for module, flag in flags:
            module.training = flag

    return restore
