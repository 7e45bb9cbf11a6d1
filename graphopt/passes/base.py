"""The pass contract: ``Pass.run(gm, ctx) -> PassResult``.

A pass declares a ``name`` (its key in logs, reports and recipes) and whether it is ``exact``
(outputs must not change beyond float rounding) or approximate (the error is measured and
reported). ``run`` is final: it checks preconditions, calls the pass body, checks the result's
type and postconditions. Housekeeping (recompile, lint, shape propagation, numerical checks)
belongs to the PassManager, not to pass bodies.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, final

import torch
from torch.fx import GraphModule

from graphopt.errors import PassError, RecipeError

__all__ = [
    "Pass",
    "PassContext",
    "PassResult",
    "Refusal",
    "describe_passes",
    "get_pass",
    "register_pass",
    "registered_passes",
]


@dataclass(frozen=True)
class Refusal:
    """A match the pass declined to rewrite, and why (shown in the report, never silent)."""

    node: str
    reason: str


@dataclass(frozen=True)
class PassResult:
    graph_module: GraphModule
    modified: bool
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))


@dataclass
class PassContext:
    """What a pass may need besides the graph: example inputs, later calibration data."""

    example_inputs: tuple[torch.Tensor, ...]
    extras: dict[str, Any] = field(default_factory=dict)


class Pass(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool]

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:  # noqa: B027 - optional hook
        """Raise ``PassError`` when the input does not satisfy the pass's preconditions."""

    @abstractmethod
    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        """The pass body: match → check (record refusals) → rewrite."""

    def ensures(self, gm: GraphModule, ctx: PassContext) -> None:  # noqa: B027 - optional hook
        """Raise ``PassError`` when the output breaks a postcondition of the pass."""

    @final
    def run(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        if not isinstance(gm, GraphModule):
            raise PassError(self.name, f"expects a torch.fx.GraphModule, got {type(gm).__name__}")
        self.requires(gm, ctx)
        result = self.call(gm, ctx)
        if not isinstance(result, PassResult):
            raise PassError(self.name, f"returned {type(result).__name__}, not a PassResult")
        self.ensures(result.graph_module, ctx)
        return result

    __call__ = run

    def options(self) -> dict[str, Any]:
        """The keyword options this instance was built with (for reports and recipes)."""
        return {k: getattr(self, k) for k in _option_names(type(self)) if hasattr(self, k)}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to recipes and the CLI under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must define a non-empty class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"pass name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str, **options: Any) -> Pass:
    """Build a registered pass by name; unknown names and options are ``RecipeError``s."""
    passes = registered_passes()
    if name not in passes:
        raise RecipeError(f"unknown pass {name!r}; known passes: {', '.join(passes)}")
    cls = passes[name]
    allowed = _option_names(cls)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = ", ".join(allowed) or "none"
        raise RecipeError(f"pass {name!r} has no option {unknown[0]!r}; its options: {hint}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"pass {name!r}: {exc}") from exc


def describe_passes() -> list[dict[str, Any]]:
    """Name, exactness, summary and options of every registered pass (for ``graphopt passes``)."""
    rows = []
    for name, cls in registered_passes().items():
        sig = inspect.signature(cls.__init__)
        options = {
            p.name: ("required" if p.default is p.empty else repr(p.default))
            for p in sig.parameters.values()
            if p.kind is p.KEYWORD_ONLY
        }
        summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        rows.append({"name": name, "exact": cls.exact, "summary": summary, "options": options})
    return rows


def _option_names(cls: type[Pass]) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]


def _load_builtin_passes() -> None:
    import graphopt.passes  # noqa: F401 - importing registers the built-in passes
