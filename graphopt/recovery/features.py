"""Run a model and read the outputs of named submodules, for feature distillation.

A name is a module path (``layer2.0``, ``layer1.0.conv1``) of the original model. On a plain
``nn.Module`` its output is read with a forward hook. On a graph captured by ``torch.export``
there are no submodules to hook: the module's nodes are those whose ``nn_module_stack``
contains the path (rewrites such as low rank copy it to the nodes they create), and its output
is the one node of that scope that a node outside the scope uses. A module called more than
once (torchvision's shared ``relu``) or returning several tensors has no single output and is
refused with that reason, as is a module whose output is not one tensor.

Features are cloned when read: the captured graph applies in-place activations
(``aten.relu_``) to a module's output a node later, which would change what was read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.fx import GraphModule, Interpreter, Node

__all__ = ["FeatureTap", "first_tensor", "make_tap", "probe"]


class FeatureTap:
    """``tap(inputs) -> (output, {name: feature})``; this base class reads no features."""

    def __init__(self, model: nn.Module, names: Sequence[str] = ()) -> None:
        self.model = model
        self.names = tuple(names)

    def __call__(self, inputs: tuple[Tensor, ...]) -> tuple[object, dict[str, Tensor]]:
        return self.model(*inputs), {}

    def only(self, names: Iterable[str]) -> FeatureTap:
        """The same kind of tap reading only ``names`` (a subset of those it resolved)."""
        return FeatureTap(self.model)


class _HookTap(FeatureTap):
    """Forward hooks on submodules; a module called other than once yields no feature."""

    def __call__(self, inputs: tuple[Tensor, ...]) -> tuple[object, dict[str, Tensor]]:
        seen: dict[str, list[object]] = {name: [] for name in self.names}
        handles = []
        for name in self.names:

            def hook(_m: nn.Module, _a: object, out: object, _name: str = name) -> None:
                seen[_name].append(out.clone() if isinstance(out, Tensor) else out)

            handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        try:
            output = self.model(*inputs)
        finally:
            for handle in handles:
                handle.remove()
        features = {}
        for name, outs in seen.items():
            if len(outs) != 1:
                raise _Unreadable(name, f"module called {len(outs)} times in one forward")
            if not isinstance(outs[0], Tensor):
                raise _Unreadable(name, f"module returns {type(outs[0]).__name__}, not a tensor")
            features[name] = outs[0]
        return output, features

    def only(self, names: Iterable[str]) -> FeatureTap:
        return _HookTap(self.model, tuple(names))


class _GraphTap(FeatureTap):
    """Interprets the graph, cloning the output node of each named scope as it is computed."""

    def __init__(self, model: GraphModule, names: Sequence[str], nodes: dict[str, Node]) -> None:
        super().__init__(model, names)
        self.nodes = nodes

    def __call__(self, inputs: tuple[Tensor, ...]) -> tuple[object, dict[str, Tensor]]:
        if not self.names:
            return self.model(*inputs), {}
        reader = _Reader(self.model, {self.nodes[name]: name for name in self.names})
        output = reader.run(*inputs)
        return output, reader.features

    def only(self, names: Iterable[str]) -> FeatureTap:
        names = tuple(names)
        return _GraphTap(self.model, names, {n: self.nodes[n] for n in names})


class _Reader(Interpreter):
    def __init__(self, gm: GraphModule, wanted: dict[Node, str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.features: dict[str, Tensor] = {}

    def run_node(self, n: Node) -> object:
        result = super().run_node(n)
        name = self.wanted.get(n)
        if name is not None:
            if not isinstance(result, Tensor):
                raise _Unreadable(name, f"output is {type(result).__name__}, not a tensor")
            self.features[name] = result.clone()
        return result


class _Unreadable(Exception):
    """A named module has no single tensor output (becomes a refusal, not an error)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def make_tap(
    model: nn.Module, names: Sequence[str], *, strict: bool = True
) -> tuple[FeatureTap, dict[str, str]]:
    """A tap for ``names`` on ``model`` and, per name it cannot read, the reason.

    A name that is no module path of ``model`` at all raises ``ValueError`` (a typo) when
    ``strict``, else it is one of the names refused.
    """
    if not names:
        return FeatureTap(model), {}
    graph = isinstance(model, GraphModule) and _has_module_stacks(model)
    known = _graph_scopes(model) if graph else {n for n, _ in model.named_modules() if n}
    unknown = [n for n in names if n not in known]
    if unknown and strict:
        example = ", ".join(sorted(known)[:6])
        raise ValueError(
            f"features entry {unknown[0]!r} is no module of the model; modules are named like "
            f"{example}"
        )
    refused = {n: "no module of that name" for n in unknown}
    names = [n for n in names if n not in refused]
    if not graph:
        return _HookTap(model, tuple(names)), refused
    tap, more = _graph_tap(model, names)
    return tap, {**refused, **more}


def _graph_scopes(gm: GraphModule) -> set[str]:
    return {
        str(path)
        for n in gm.graph.nodes
        if n.op == "call_function"
        for path, _ in (n.meta.get("nn_module_stack") or {}).values()
    } - {""}


def _graph_tap(gm: GraphModule, names: Sequence[str]) -> tuple[FeatureTap, dict[str, str]]:
    ops = [n for n in gm.graph.nodes if n.op == "call_function"]
    scopes = {
        n: {str(path) for path, _ in (n.meta.get("nn_module_stack") or {}).values()} for n in ops
    }
    nodes, refused = {}, {}
    for name in names:
        inside = {n for n in ops if name in scopes[n]}
        outputs = [n for n in inside if any(u not in inside for u in n.users)]
        if len(outputs) == 1:
            nodes[name] = outputs[0]
        else:
            refused[name] = (
                f"no single output node in the graph ({len(outputs)}: the module is called "
                "more than once or returns several values)"
            )
    kept = tuple(n for n in names if n in nodes)
    return _GraphTap(gm, kept, nodes), refused


def _has_module_stacks(gm: GraphModule) -> bool:
    return any(n.meta.get("nn_module_stack") for n in gm.graph.nodes if n.op == "call_function")


def probe(
    tap: FeatureTap, inputs: tuple[Tensor, ...]
) -> tuple[FeatureTap, object, dict[str, Tensor], dict[str, str]]:
    """Run ``tap`` once; drop each module without a single tensor output, with the reason.

    Returns the (possibly narrowed) tap, the output, the features and the dropped names.
    """
    refused: dict[str, str] = {}
    while True:
        try:
            output, features = tap(inputs)
            return tap, output, features, refused
        except _Unreadable as exc:
            refused[exc.name] = exc.reason
            tap = tap.only(n for n in tap.names if n != exc.name)


def first_tensor(output: object) -> Tensor:
    """The logits: the output itself, or its first tensor leaf (tuples, dicts, HF outputs)."""
    if isinstance(output, Tensor):
        return output
    for leaf in torch.utils._pytree.tree_leaves(output):
        if isinstance(leaf, Tensor):
            return leaf
    raise ValueError(f"the model returned no tensor (got {type(output).__name__})")
