"""Built-in rewrite passes. Importing this package registers them by name."""

from graphopt.passes.adapt import Adapt
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
from graphopt.passes.cluster import Cluster
from graphopt.passes.fold_batchnorm import FoldBatchNorm
from graphopt.passes.low_rank import LowRank
from graphopt.passes.prune_channels import PruneChannels
from graphopt.passes.quantize import Quantize
from graphopt.passes.quantize_weights import QuantizeWeights
from graphopt.passes.recover import Recover
from graphopt.passes.remove_blocks import RemoveBlocks
from graphopt.passes.sparsify import Sparsify

__all__ = [
    "Adapt",
    "Cluster",
    "FoldBatchNorm",
    "LowRank",
    "Pass",
    "PassContext",
    "PassResult",
    "PruneChannels",
    "Quantize",
    "QuantizeWeights",
    "Recover",
    "Refusal",
    "RemoveBlocks",
    "Sparsify",
    "describe_passes",
    "get_pass",
    "register_pass",
    "registered_passes",
]
