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
from graphopt.passes.low_rank import LowRank
from graphopt.passes.prune_channels import PruneChannels

__all__ = [
    "FoldBatchNorm",
    "LowRank",
    "Pass",
    "PassContext",
    "PassResult",
    "PruneChannels",
    "Refusal",
    "describe_passes",
    "get_pass",
    "register_pass",
    "registered_passes",
]
