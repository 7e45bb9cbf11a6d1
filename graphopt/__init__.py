"""graphopt: a model compression compiler for PyTorch.

``trace`` captures a model as an ATen-level FX graph, ``PassManager`` runs verified rewrite
passes over it, ``analyze`` measures it, ``compress`` does all of it plus backend timing and the
report. ``save``/``load`` (.pt2) and ``export_onnx`` write and read compressed models. Backends
live in ``graphopt.backends``, passes in ``graphopt.passes``.
"""

from graphopt import zoo
from graphopt.analysis import ModelStats, analyze
from graphopt.artifacts import export_onnx, load, save
from graphopt.capture import trace
from graphopt.errors import GraphoptError
from graphopt.pass_manager import PassManager, PipelineResult
from graphopt.runner import CompressionRun, compress

__all__ = [
    "CompressionRun",
    "GraphoptError",
    "ModelStats",
    "PassManager",
    "PipelineResult",
    "analyze",
    "compress",
    "export_onnx",
    "load",
    "save",
    "trace",
    "zoo",
]
__version__ = "0.1.0"
