"""Copies of a graph that share its tensors, and the guard that makes sharing safe.

Why: the pass manager keeps the captured original (the teacher, the report's reference, what
the backends time against the result) while passes rewrite a copy. A full ``deepcopy`` of
the copy, and another inside each pass that works on a copy, costs the model's size each
time: an HF BERT encoder (hidden 512, 8 layers, 98 MB of weights) peaked at 4.4× its size
above the process baseline through prune → low rank → quantize (``benchmarks/memory.py``).
Passes replace the tensors they change (slicing, folding, factorizing and quantizing all
build new ones) and leave most of the others as they are, so the copies can share every
tensor: copy on write, at tensor granularity.

The rule that makes it safe: **a pass never writes into a tensor in place**; it builds a new
one and sets it (``graphopt.ir.set_tensor``), or declares ``writes_in_place = True`` and is
handed a private deep copy. ``TensorWatch`` checks the rule after every
pass, from each shared tensor's version counter (bumped by every in-place op on the tensor
or a view of it) and its storage address (``param.data = …``), so a pass that breaks it is
named at once instead of silently changing the original and the user's reference numbers.
Writes through ``.data`` escape the counter; the pass contract tests compare bytes.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch.fx import GraphModule

from graphopt.errors import PassError
from graphopt.ir import get_tensor

__all__ = ["TensorWatch", "graph_tensors", "private_copy", "shared_copy"]


def graph_tensors(gm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor the module holds: parameters, buffers (tied ones under each name) and
    the plain tensor constants its ``get_attr`` nodes read."""
    tensors: dict[str, torch.Tensor] = dict(gm.named_parameters(remove_duplicate=False))
    tensors.update(gm.named_buffers(remove_duplicate=False))
    if isinstance(gm, GraphModule):
        for node in gm.graph.nodes:
            if node.op == "get_attr" and str(node.target) not in tensors:
                value = get_tensor(gm, node)
                if value is not None:
                    tensors[str(node.target)] = value
    return tensors


def shared_copy(gm: GraphModule) -> GraphModule:
    """A copy of ``gm`` (modules, graph, meta) holding the very same tensor objects."""
    memo: dict[int, object] = {id(t): t for t in graph_tensors(gm).values()}
    with warnings.catch_warnings():  # torch's pytree deprecation noise on deepcopy
        warnings.filterwarnings("ignore", category=FutureWarning)
        return copy.deepcopy(gm, memo)


def private_copy(gm: GraphModule) -> GraphModule:
    """A deep copy of ``gm`` whose tensors are its own (for a pass that writes in place)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return copy.deepcopy(gm)


@dataclass(frozen=True)
class _Seen:
    tensor: torch.Tensor
    version: int
    address: int


class TensorWatch:
    """The tensors of a graph as they are now; ``check`` names the first one written since."""

    def __init__(self, gm: torch.nn.Module) -> None:
        self._seen = {
            name: _Seen(t, t._version, t.untyped_storage().data_ptr())
            for name, t in graph_tensors(gm).items()
        }

    def changed(self) -> list[str]:
        """Names of the watched tensors written in place (or given new data) since."""
        return [
            name
            for name, seen in self._seen.items()
            if seen.tensor._version != seen.version
            or seen.tensor.untyped_storage().data_ptr() != seen.address
        ]

    def check(self, pass_name: str) -> None:
        """``PassError`` naming ``pass_name`` when it wrote into a shared tensor."""
        changed = self.changed()
        if changed:
            more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
            raise PassError(
                pass_name,
                f"wrote in place into tensor {changed[0]!r}{more}, which it shares with the "
                "original graph: a pass must set a new tensor where it changes one "
                "(graphopt.ir.set_tensor), never write into it. This is a bug in the pass; "
                "the original's tensor is now changed too",
            )
