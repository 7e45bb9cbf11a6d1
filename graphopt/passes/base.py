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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, final

import torch
from torch.fx import GraphModule

from graphopt.errors import PassError, RecipeError
from graphopt.options import Configurable, Options, describe_field, parse_options

__all__ = [
    "CONTEXT_FIELDS",
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
    """What a pass returns. ``refusals`` (matches declined, with the reason) and ``tables``
    (named lists of rows: frozen groups, sensitivity, search traces…) are typed; both also
    appear in ``stats`` (``refused`` and the table's name), which is what the report renders
    for every pass alike and what ``report.json`` keeps."""

    graph_module: GraphModule
    modified: bool
    stats: Mapping[str, Any] = field(default_factory=dict)
    refusals: tuple[Refusal, ...] = ()
    tables: Mapping[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        stats = dict(self.stats)
        if self.refusals:
            stats.setdefault("refused", [asdict(r) for r in self.refusals])
        for name, rows in self.tables.items():
            stats.setdefault(name, [dict(row) for row in rows])
        refused = stats.get("refused") or []
        refusals = self.refusals or tuple(
            Refusal(str(r.get("node", r.get("layer", "?"))), str(r.get("reason", "")))
            for r in refused
            if isinstance(r, Mapping)
        )
        tables = {  # every list of rows, the given tables and the refusals included
            key: value
            for key, value in stats.items()
            if isinstance(value, (list, tuple))
            and value
            and all(isinstance(row, Mapping) for row in value)
        }
        object.__setattr__(self, "stats", MappingProxyType(stats))
        object.__setattr__(self, "refusals", refusals)
        object.__setattr__(self, "tables", MappingProxyType(tables))


# What each context field is and where it comes from: the one wording of "this pass needs X".
CONTEXT_FIELDS: dict[str, str] = {
    "teacher": "the original model (graphopt.compress gives the captured original)",
    "train": (
        "training data, a re-iterable of (inputs, labels) batches, labels possibly None "
        "(TaskData.train; in a recipe, a `data:` task that has train batches)"
    ),
    "calibration": (
        "calibration data, a re-iterable of input tuples such as [(x1,), (x2,)] "
        "(TaskData.calibration; in a recipe, `data:` — a task, or `random` for ranges only)"
    ),
    "validate": "a held-out metric, callable(model) -> float | {name: float} (TaskData.validate)",
    "evaluate": "the task metric, callable(model) -> float | {name: float} (recipe `evaluate:`)",
    "latency": (
        "a latency probe, callable(module, example_inputs) -> seconds (a recipe's first "
        "backend; graphopt.runner.latency_probe in Python)"
    ),
    "progress": "a callable(message) that reports progress",
    "layer_latency": (
        "per-layer latency, callable([LayerSpec, ...]) -> seconds each (a recipe's first "
        "backend when it measures single layers, as onnxruntime does; "
        "graphopt.backends.layer_latency.OrtLayerLatency in Python)"
    ),
}


@dataclass
class PassContext:
    """What a pass may need besides the graph, as named fields (see :data:`CONTEXT_FIELDS`).

    ``extras`` holds anything else, for passes users write; a known name given there (the
    older ``PassContext(inputs, extras={"calibration": …})`` form) is moved to its field.
    """

    example_inputs: tuple[torch.Tensor, ...]
    extras: dict[str, Any] = field(default_factory=dict)
    teacher: torch.nn.Module | None = None
    train: Iterable[Any] | None = None
    calibration: Iterable[Any] | None = None
    validate: Callable[[torch.nn.Module], Any] | None = None
    evaluate: Callable[[torch.nn.Module], Any] | None = None
    latency: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], float] | None = None
    progress: Callable[[str], None] | None = None
    layer_latency: Callable[[Sequence[Any]], Sequence[float]] | None = None

    def __post_init__(self) -> None:
        for key in [k for k in self.extras if k in CONTEXT_FIELDS]:
            if getattr(self, key) is None:
                setattr(self, key, self.extras.pop(key))

    @property
    def scorer(self) -> Callable[[torch.nn.Module], Any] | None:
        """What a pass that *chooses* scores with: ``validate``, else ``evaluate``."""
        return self.validate if self.validate is not None else self.evaluate

    def require(self, pass_name: str, *names: str, purpose: str = "") -> None:
        """Raise the standard ``PassError`` when a field is missing (or a callable is not)."""
        for key in names:
            value = getattr(self, key)
            what = CONTEXT_FIELDS[key]
            for_what = f" for {purpose}" if purpose else ""
            if value is None:
                raise PassError(pass_name, f"needs ctx.{key}{for_what}: {what}")
            must_call = key in ("validate", "evaluate", "latency", "progress", "layer_latency")
            if must_call and not callable(value):
                raise PassError(
                    pass_name,
                    f"ctx.{key} must be {what.split(' (')[0]}, got {type(value).__name__}",
                )
            if key == "teacher" and not isinstance(value, torch.nn.Module):
                raise PassError(
                    pass_name, f"ctx.teacher must be a torch.nn.Module, got {type(value).__name__}"
                )


class NoOptions(Options):
    """A pass without options."""


class Pass(Configurable, ABC):
    """A rewrite pass. Its options are declared once, as the pydantic model ``Options``:
    ``Prune(target_macs=0.5)`` validates them (an ``OptionError`` naming the option) and sets
    each as an attribute; ``graphopt passes`` and the recipe JSON Schema read the model."""

    name: ClassVar[str]
    exact: ClassVar[bool]
    Options: ClassVar[type[Options]] = NoOptions
    #: False (every built-in pass): the pass sets a new tensor where it changes one and never
    #: writes into a tensor, so the pass manager lets it share tensors with the original
    #: (``graphopt.sharing``) and checks that it did not write. True: the manager hands it a
    #: deep copy first, for a pass that must write in place (costs the model's size).
    writes_in_place: ClassVar[bool] = False

    def requires(self, gm: GraphModule, ctx: PassContext) -> None:
        """Raise ``PassError`` when the input does not satisfy the pass's preconditions."""

    @abstractmethod
    def call(self, gm: GraphModule, ctx: PassContext) -> PassResult:
        """The pass body: match → check (record refusals) → rewrite."""

    def ensures(self, gm: GraphModule, ctx: PassContext) -> None:
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


def get_pass(name: str, *, where: str | None = None, **options: Any) -> Pass:
    """Build a registered pass by name; unknown names and bad options are ``RecipeError``s
    (``OptionError``) whose message starts with ``where`` (e.g. ``passes[1].prune``)."""
    passes = registered_passes()
    if name not in passes:
        raise RecipeError(f"unknown pass {name!r}; known passes: {', '.join(passes)}")
    cls = passes[name]
    options_model = parse_options(cls.Options, options, where=where or name)
    return cls(**{k: getattr(options_model, k) for k in options})


def describe_passes() -> list[dict[str, Any]]:
    """Name, exactness, summary and options (type, range, default, help) of every pass."""
    rows = []
    for name, cls in registered_passes().items():
        options = {}
        for key, info in cls.Options.model_fields.items():
            default = None if info.is_required() else info.get_default(call_default_factory=True)
            options[key] = {
                "type": describe_field(info),
                "default": default.model_dump() if isinstance(default, Options) else default,
                "required": info.is_required(),
                "help": info.description or "",
            }
        summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
        rows.append(
            {
                "name": name,
                "exact": cls.exact,
                "summary": summary,
                "options": options,
                "schema": cls.Options.model_json_schema(),
            }
        )
    return rows


def _option_names(cls: type[Pass]) -> list[str]:
    return list(cls.Options.model_fields)


def _load_builtin_passes() -> None:
    import graphopt.passes  # noqa: F401 - importing registers the built-in passes
