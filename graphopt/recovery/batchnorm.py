"""Switch a student's BatchNorm between batch statistics (training) and running statistics.

Why: pruning or factoring a layer shifts the distribution of everything after it, so the
running statistics captured with the original model no longer normalise it (seen here: a
ResNet pruned to half its MACs drops from 99.7% to chance on digits, and fine-tuning with the
stale statistics frozen crawls back; with batch statistics it recovers within an epoch). So
by default the student's BatchNorm trains as ``model.train()`` would make it: normalising with
each batch's statistics and updating the running ones with its own momentum; evaluation and
the returned model use the running statistics, as before.

On a graph captured by ``torch.export`` BatchNorm is ``aten.batch_norm(x, w, b, mean, var,
training, momentum, eps, cudnn)`` with ``training=False``; switching sets that argument and
recompiles (the running buffers are the graph's own, so their updates persist). On a plain
module the BatchNorm submodules' ``training`` flags are set. Both are restored afterwards.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx import GraphModule, Node

from graphopt.ir import is_op

__all__ = ["BatchNormSwitch"]

_TRAINING_ARG = 5


class BatchNormSwitch:
    """``use_batch_stats(True/False)`` toggles; ``restore()`` puts the original form back.

    With ``enabled=False`` it controls nothing (BatchNorm stays frozen).
    """

    def __init__(self, model: nn.Module, *, enabled: bool = True) -> None:
        self.model = model
        self.nodes: list[Node] = []
        self.modules: list[tuple[nn.Module, bool]] = []
        self.active = False
        if not enabled:
            return
        if isinstance(model, GraphModule) and not _has_submodule_calls(model):
            self.nodes = [
                n
                for n in model.graph.nodes
                if is_op(n, (torch.ops.aten.batch_norm,))
                and len(n.args) > _TRAINING_ARG
                and n.args[_TRAINING_ARG] is False
                and n.args[3] is not None
            ]
        else:
            self.modules = [
                (m, m.training)
                for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            ]

    @property
    def count(self) -> int:
        """How many BatchNorm layers the switch controls."""
        return len(self.nodes) + len(self.modules)

    def use_batch_stats(self, on: bool) -> None:
        if on == self.active or not self.count:
            return
        for node in self.nodes:
            args = list(node.args)
            args[_TRAINING_ARG] = on
            node.args = tuple(args)
        if self.nodes:
            self.model.recompile()
        for module, _ in self.modules:
            module.training = on
        self.active = on

    def restore(self) -> None:
        self.use_batch_stats(False)
        for module, flag in self.modules:
            module.training = flag


def _has_submodule_calls(gm: GraphModule) -> bool:
    """A symbolically traced graph calls BatchNorm modules (handled through their flags)."""
    return any(
        n.op == "call_module"
        and isinstance(gm.get_submodule(str(n.target)), nn.modules.batchnorm._BatchNorm)
        for n in gm.graph.nodes
    )
