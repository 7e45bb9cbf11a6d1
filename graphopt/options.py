"""Typed options, declared once: one pydantic model per pass or backend validates, lists and
documents them.

Why pydantic and not constrained dataclasses: the same declaration gives the validation (with
the failing field's location), the JSON Schema that editors use for recipe files and
``graphopt passes --json``, and the defaults/ranges that ``graphopt passes`` lists, where
dataclasses would need all three written by hand — which is what the ~500 lines of hand-written
checks in six ``__init__``s had become. pydantic is already installed with the toolchain here.

Conventions: models are strict (``True`` is not 1, ``"0.5"`` is not 0.5; an ``int`` is accepted
for a ``float``), frozen and forbid unknown keys. YAML gives lists where options hold tuples,
so :data:`Names` accepts a list of strings. Cross-field rules are ``model_validator``\\ s whose
``ValueError`` text is the message. Every failure is an :class:`OptionError` whose message
names the option by its path, e.g. ``passes[1].prune.target_macs: must be in (0, 1], got 2``.
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from graphopt.errors import RecipeError

__all__ = [
    "Configurable",
    "Names",
    "OptionError",
    "Options",
    "describe_field",
    "parse_options",
    "type_text",
]


class OptionError(RecipeError, ValueError):
    """A bad option of a pass, a backend or a recipe (the one error type for all of them).

    A ``ValueError`` too, as Python code that builds a pass directly has always expected."""


def _names(value: Any) -> Any:
    """A list of non-empty strings, as YAML writes it, to the tuple the option holds."""
    if isinstance(value, str):
        raise ValueError("must be a list of names such as ['fc'], not one string")
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"must be a list of non-empty names such as ['fc'], got {value!r}")
        return tuple(value)
    return value


Names = Annotated[tuple[str, ...], BeforeValidator(_names)]


class Options(BaseModel):
    """Base of every options model: strict, frozen, no unknown keys."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        arbitrary_types_allowed=True,
        allow_inf_nan=False,
        protected_namespaces=(),
    )
    owner: ClassVar[str] = "options"  # the pass or backend name, for messages


class Configurable:
    """A pass or backend built from keyword options declared as its ``Options`` model.

    ``__init__(**options)`` validates them (an ``OptionError`` naming ``name.option``) and sets
    each as an attribute, so a body reads ``self.ratio``; ``options()`` gives them back with
    every default filled in, which is what a recipe "as run" records.
    """

    name: ClassVar[str]
    Options: ClassVar[type[Options]]

    def __init__(self, **options: Any) -> None:
        self.opts = parse_options(self.Options, options, where=self.name)
        for key in type(self.opts).model_fields:
            setattr(self, key, getattr(self.opts, key))

    def options(self) -> dict[str, Any]:
        """Every option of this instance, defaults included."""
        return self.opts.model_dump()


def parse_options(
    model: type[Options], values: Mapping[str, Any], *, where: str | None = None
) -> Options:
    """Validate ``values`` against ``model``; failures name ``where.option`` and the fix."""
    where = where or model.owner
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise OptionError(_message(model, exc, where)) from None
    except TypeError as exc:  # e.g. a non-string key
        raise OptionError(f"{where}: {exc}") from None


def _message(model: type[Options], exc: ValidationError, where: str) -> str:
    error = exc.errors(include_url=False)[0]
    # pydantic names union branches in the location ('constrained-int', 'tuple[int, int]'):
    # keep the option's path only
    loc = [str(p) for p in error["loc"] if not ("-" in str(p) or "[" in str(p))]
    kind = error["type"]
    if kind == "extra_forbidden":
        owner, fields = where, model.model_fields
        for part in loc[:-1]:  # a nested options model, e.g. quantize.calibration
            nested = _unwrap(fields[part].annotation) if part in fields else None
            owner = f"{owner}.{part}"
            fields = (
                nested.model_fields
                if isinstance(nested, type) and issubclass(nested, BaseModel)
                else {}
            )
        known = ", ".join(fields) or "none"
        return f"{owner} has no option {loc[-1]!r}; its options: {known}"
    if not loc:  # a cross-field rule
        return f"{where}: {_strip(error['msg'])}"
    name = loc[0]
    field = model.model_fields.get(name)
    got = error.get("input")
    if kind in ("value_error", "assertion_error"):
        return f"{where}.{'.'.join(loc)}: {_strip(error['msg'])}"
    if field is not None and (len(loc) == 1 or _is_union(_unwrap(field.annotation))):
        # a union's branch names ('constrained-int') say nothing to a user: name the option
        return f"{where}.{name}: must be {describe_field(field)}, got {got!r}"
    leaf = _nested_field(model, loc)
    if leaf is not None:
        return f"{where}.{'.'.join(loc)}: must be {describe_field(leaf)}, got {got!r}"
    return f"{where}.{'.'.join(loc)}: {_strip(error['msg']).lower()}, got {got!r}"


def _nested_field(model: type[BaseModel], loc: Sequence[str]) -> FieldInfo | None:
    """The declaration at ``loc`` through nested options models (None past a dict or list)."""
    info = None
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(part)
        if info is None:
            return None
        model = _unwrap(info.annotation)
    return info


def _unwrap(annotation: Any) -> Any:
    return (
        typing.get_args(annotation)[0] if typing.get_origin(annotation) is Annotated else annotation
    )


def _strip(message: str) -> str:
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def describe_field(field: FieldInfo) -> str:
    """``a number in (0, 1]``, ``one of 'l1', 'l2'``, ``a list of names``… from the declaration."""
    optional, text = _optional(field.annotation)
    bounds = _bounds(field)
    text = f"{text} {bounds}" if bounds else text
    return f"{text} (or null)" if optional else text


def _optional(annotation: Any) -> tuple[bool, str]:
    args = typing.get_args(annotation)
    if _is_union(annotation) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return True, " or ".join(type_text(a) for a in rest)
    return False, type_text(annotation)


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def type_text(annotation: Any) -> str:
    """A reader's name for a type annotation (for messages and ``graphopt passes``)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        if args[0] == tuple[str, ...]:
            return "a list of names"
        metadata = [m for a in args[1:] for m in (a.metadata if isinstance(a, FieldInfo) else [a])]
        bounds = _bounds_text(metadata)
        return f"{type_text(args[0])} {bounds}" if bounds else type_text(args[0])
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(annotation):
        return " or ".join(type_text(a) for a in args)
    if origin in (tuple, list, collections.abc.Sequence):
        return f"a list of {type_text(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a mapping of {', '.join(annotation.model_fields)}"
    if origin is collections.abc.Callable or annotation is collections.abc.Callable:
        return "a callable"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> str:
    return _bounds_text(field.metadata)


def _bounds_text(metadata: Sequence[Any]) -> str:
    low = high = None
    low_open = high_open = False
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            low, low_open = item.gt, True
        elif isinstance(item, annotated_types.Ge):
            low, low_open = item.ge, False
        elif isinstance(item, annotated_types.Lt):
            high, high_open = item.lt, True
        elif isinstance(item, annotated_types.Le):
            high, high_open = item.le, False
    if low is None and high is None:
        return ""
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"in {left}{low:g}, {'inf' if math.isinf(high) else f'{high:g}'}{right}"
