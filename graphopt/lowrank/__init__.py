"""Low-rank decomposition of linear and conv2d layers: the maths behind the ``low_rank`` pass.

- ``factorize``: SVD, Tucker-2, CP, spatial SVD and output-PCA as pure tensor functions;
- ``ranks``: rank by ratio, by energy, or automatic (EVBMF), and rounding;
- ``layers``: which nodes can be decomposed, the factor layers' shapes and their cost;
- ``calibration``: output mean and covariance of layers on calibration data (for PCA);
- ``rewrite``: the FX surgery replacing one node by its factor layers.
"""

from graphopt.lowrank.calibration import OutputStats, collect_output_stats
from graphopt.lowrank.factorize import Factorization, cp, pca, spatial_svd, svd, tucker2
from graphopt.lowrank.layers import METHODS, Layer, Stage, factor_stages, read_layer, stage_cost
from graphopt.lowrank.ranks import evbmf_rank, rank_for_energy, rank_for_ratio, round_up
from graphopt.lowrank.rewrite import replace_layer

__all__ = [
    "METHODS",
    "Factorization",
    "Layer",
    "OutputStats",
    "Stage",
    "collect_output_stats",
    "cp",
    "evbmf_rank",
    "factor_stages",
    "pca",
    "rank_for_energy",
    "rank_for_ratio",
    "read_layer",
    "replace_layer",
    "round_up",
    "spatial_svd",
    "stage_cost",
    "svd",
    "tucker2",
]
