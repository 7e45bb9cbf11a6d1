"""Built-in rewrite passes. Importing this package registers them by name."""

from graphopt.passes.base import (
    Pass,
    PassContext,
    PassResult,
    Refusal,
    describe_passes,
    get_pass,
    register_pass,
    registered_passes,
)
from graphopt.passes.fold_batchnorm import FoldBatchNorm

__all__ = [
    "FoldBatchNorm",
    "Pass",
    "PassContext",
    "PassResult",
    "Refusal",
    "describe_passes",
    "get_pass",
    "register_pass",
    "registered_passes",
]
