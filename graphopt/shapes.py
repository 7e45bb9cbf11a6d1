"""Dynamic dimensions beyond the batch: declared once, kept through capture, passes and backends.

By default only the batch (dimension 0 of every input) is symbolic. A BERT-style model then
accepts one sequence length and a fully convolutional model one image size. Users declare
more with ``dynamic_shapes=`` (Python) or ``dynamic:`` (recipe), one entry per model input,
each a mapping from a dimension to a name (the same name on several inputs means the same
size), optionally with bounds::

    dynamic_shapes=({1: "seq"}, {1: "seq"})               # token ids and attention mask
    dynamic_shapes=[{2: {"name": "h", "min": 16}, 3: "w"}]  # an image's H and W
    dynamic: {0: {1: seq}, 1: {1: seq}}                   # a recipe, keyed by input index

The normalised declaration (:class:`DynamicDim` per dimension) is stored on the captured
graph (``gm.meta["graphopt_dynamic_shapes"]``), so every later export (re-capture, ``.pt2``,
ONNX) asks ``torch.export`` for the same symbols, and :func:`resized_inputs` gives inputs at
other sizes to prove that a rewritten graph still takes them. The batch stays ``Dim.AUTO``
(symbolic where the model allows) unless the user names dimension 0 too.

Why named ``Dim``s and not ``Dim.AUTO`` for the declared ones: ``AUTO`` lets export specialise
a dimension silently, which is exactly the failure this module exists to surface; a named
``Dim`` makes export fail with the guard that fixed it (``seq <= 512``), which
:func:`explain_constraint_violation` turns into a one-line "declare max: 512".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from graphopt.errors import RecipeError

__all__ = [
    "DECLARATION_SCHEMA",
    "META_KEY",
    "DynamicDim",
    "DynamicShapes",
    "check_declaration",
    "declared_shapes",
    "describe",
    "explain_constraint_violation",
    "export_dynamic_shapes",
    "other_sizes",
    "parse_dynamic_shapes",
    "resized_inputs",
]

META_KEY = "graphopt_dynamic_shapes"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class DynamicDim:
    """One declared dynamic dimension: its symbol's name and optional inclusive bounds."""

    name: str
    min: int | None = None
    max: int | None = None


# One entry per model input: {dimension: DynamicDim}; empty where the input has none declared.
DynamicShapes = tuple[dict[int, DynamicDim], ...]


def parse_dynamic_shapes(
    spec: object, inputs: Sequence[torch.Tensor], *, where: str = "dynamic_shapes"
) -> DynamicShapes | None:
    """Validate a user's declaration against the example inputs; ``None`` when there is none.

    Accepts a sequence with one entry per input (``None`` or a mapping) or a mapping keyed by
    input index. Each dimension maps to a name, ``{"name", "min", "max"}``, or a
    ``torch.export.Dim``. Raises ``RecipeError`` naming the input and dimension for: an index
    out of range, a bad name, bounds that exclude the example's size, size 1 in the example
    (export always specialises size-1 dimensions), and one name used with two example sizes.
    """
    if spec is None:
        return None
    per_input = _per_input(spec, len(inputs), where)
    parsed: list[dict[int, DynamicDim]] = []
    seen: dict[str, tuple[DynamicDim, int, str]] = {}
    for index, (entry, tensor) in enumerate(zip(per_input, inputs, strict=True)):
        dims: dict[int, DynamicDim] = {}
        for key, value in (entry or {}).items():
            label = f"{where}: input {index}, dimension {key!r}"
            dim = _dimension_index(key, tensor.dim(), label)
            declared = _dynamic_dim(value, label)
            size = int(tensor.shape[dim])
            _check_example_size(declared, size, label)
            if declared.name in seen:
                other, other_size, other_label = seen[declared.name]
                if other_size != size:
                    raise RecipeError(
                        f"{label} is named {declared.name!r} like {other_label}, but the "
                        f"example sizes differ ({size} and {other_size}); one name is one size"
                    )
                if (other.min, other.max) != (declared.min, declared.max):
                    raise RecipeError(
                        f"{label} gives {declared.name!r} other bounds than {other_label}"
                    )
            seen[declared.name] = (declared, size, label)
            dims[dim] = declared
        parsed.append(dims)
    if not any(parsed):
        return None
    return tuple(parsed)


def _per_input(spec: object, count: int, where: str) -> list[Mapping | None]:
    if isinstance(spec, Mapping):
        entries: list[Mapping | None] = [None] * count
        for raw_key, value in spec.items():
            key = _int_key(raw_key)
            if not isinstance(key, int) or not 0 <= key < count:
                raise RecipeError(
                    f"{where}: key {key!r} is not an input index (the model takes {count} "
                    f"input(s), indices 0..{count - 1}); give {{input index: {{dim: name}}}}"
                )
            entries[key] = _mapping(value, f"{where}: input {key}")
        return entries
    if isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        if len(spec) != count:
            raise RecipeError(
                f"{where} has {len(spec)} entr(y/ies), the model takes {count} input(s); give "
                "one entry per input ({dim: name}, or null for none)"
            )
        return [
            None if v is None else _mapping(v, f"{where}: input {i}") for i, v in enumerate(spec)
        ]
    raise RecipeError(
        f"{where} must be a list with one {{dim: name}} per input or a mapping "
        f"{{input index: {{dim: name}}}}, got {type(spec).__name__}"
    )


def _int_key(key: object) -> object:
    """``"1"`` → 1: TOML and JSON keys are strings; bools are not indices."""
    if isinstance(key, str) and key.lstrip("-").isdigit():
        return int(key)
    return None if isinstance(key, bool) else key


def check_declaration(spec: object, *, where: str) -> object:
    """The form of a declaration, before the model's inputs are known (a recipe's
    ``dynamic:``): a list of ``{dim: name}`` (or null) per input, or ``{input index: {dim:
    name}}``; each value a name or ``{name, min, max}``. Sizes are checked at capture."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        entries = list(spec.items())
        for key, _ in entries:
            index = _int_key(key)
            if not isinstance(index, int) or index < 0:
                raise RecipeError(f"{where}: key {key!r} is not an input index (0, 1, …)")
    elif isinstance(spec, Sequence) and not isinstance(spec, str | bytes):
        entries = list(enumerate(spec))
    else:
        raise RecipeError(
            f"{where} must be a list with one {{dim: name}} per input or a mapping "
            f"{{input index: {{dim: name}}}}, got {type(spec).__name__}"
        )
    for index, entry in entries:
        if entry is None:
            continue
        for key, value in _mapping(entry, f"{where}: input {index}").items():
            label = f"{where}: input {index}, dimension {key!r}"
            if not isinstance(_int_key(key), int):
                raise RecipeError(f"{label} is not a dimension index")
            _dynamic_dim(value, label)
    return spec


_BOUND = {"type": "integer", "minimum": 2}
_DIMS = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "min": _BOUND, "max": _BOUND},
            },
        ]
    },
}
DECLARATION_SCHEMA: dict[str, Any] = {  # the recipe schema's ``dynamic`` property
    "description": "dimensions kept dynamic beyond the batch: one {dim: name} per input",
    "anyOf": [
        {"type": "array", "items": {"anyOf": [_DIMS, {"type": "null"}]}},
        {"type": "object", "additionalProperties": _DIMS},
    ],
}


def _mapping(value: object, label: str) -> Mapping:
    if not isinstance(value, Mapping):
        raise RecipeError(f"{label} must be a mapping {{dim: name}}, got {type(value).__name__}")
    return value


def _dimension_index(key: object, rank: int, label: str) -> int:
    key = _int_key(key)
    if not isinstance(key, int) or not -rank <= key < rank:
        raise RecipeError(f"{label} is not a dimension of a rank-{rank} input")
    return key % rank


def _dynamic_dim(value: object, label: str) -> DynamicDim:
    if isinstance(value, DynamicDim):
        declared = value
    elif isinstance(value, str):
        declared = DynamicDim(value)
    elif isinstance(value, Mapping):
        unknown = set(value) - {"name", "min", "max"}
        if unknown or "name" not in value:
            raise RecipeError(f"{label}: give {{name, min, max}} (min and max optional)")
        declared = DynamicDim(value["name"], value.get("min"), value.get("max"))
    elif isinstance(value, torch.export.Dim):
        declared = _from_torch_dim(value)
    else:
        raise RecipeError(f"{label}: give a name, {{name, min, max}} or a torch.export.Dim")
    if not isinstance(declared.name, str) or not _NAME.match(declared.name):
        raise RecipeError(f"{label}: name {declared.name!r} must be an identifier (e.g. seq)")
    for bound in (declared.min, declared.max):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, int)):
            raise RecipeError(f"{label}: bounds must be integers, got {bound!r}")
    return declared


def _from_torch_dim(dim: Any) -> DynamicDim:
    low, high = getattr(dim, "min", None), getattr(dim, "max", None)
    low = None if low is None or low <= 2 else int(low)  # export's floor is 2 anyway
    high = None if high is None or str(high) == "int_oo" or high >= 2**62 else int(high)
    return DynamicDim(str(dim.__name__), low, high)


def _check_example_size(declared: DynamicDim, size: int, label: str) -> None:
    if size < 2:
        raise RecipeError(
            f"{label} is {size} in the example inputs; torch.export specialises sizes 0 and 1, "
            "so give an example of size >= 2 on a dynamic dimension"
        )
    low, high = declared.min, declared.max
    if (low is not None and size < low) or (high is not None and size > high):
        raise RecipeError(
            f"{label}: the example's size {size} is outside {declared.name}'s bounds "
            f"[{low if low is not None else 2}, {high if high is not None else '∞'}]"
        )
    if low is not None and high is not None and low > high:
        raise RecipeError(f"{label}: min {low} > max {high}")


def declared_shapes(module: torch.nn.Module) -> DynamicShapes | None:
    """What a captured graph was declared with (``None`` for a batch-only capture)."""
    meta = getattr(module, "meta", None)
    return meta.get(META_KEY) if isinstance(meta, dict) else None


def export_dynamic_shapes(
    declared: DynamicShapes | None, inputs: Sequence[torch.Tensor], *, dynamic_batch: bool
) -> tuple[dict[int, Any] | None, ...] | None:
    """The ``dynamic_shapes`` argument for ``torch.export`` / the dynamo ONNX exporter.

    Declared dimensions become named ``Dim``s (one object per name, so inputs that share a
    name share a symbol); the batch is ``Dim.AUTO`` when ``dynamic_batch`` and not declared.
    """
    if declared is None and not dynamic_batch:
        return None
    symbols: dict[str, Any] = {}
    shapes: list[dict[int, Any] | None] = []
    for index, tensor in enumerate(inputs):
        dims: dict[int, Any] = {}
        if dynamic_batch and tensor.dim() > 0:
            dims[0] = torch.export.Dim.AUTO
        for dim, spec in (declared[index] if declared else {}).items():
            if spec.name not in symbols:
                bounds = {k: v for k, v in (("min", spec.min), ("max", spec.max)) if v is not None}
                symbols[spec.name] = torch.export.Dim(spec.name, **bounds)
            dims[dim] = symbols[spec.name]
        shapes.append(dims or None)
    return tuple(shapes)


def other_sizes(declared: DynamicShapes, inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """A size other than the example's for every declared name: twice it where the bounds
    allow (which keeps any divisibility the model needs), else the bound farthest from it."""
    sizes: dict[str, int] = {}
    for dims, tensor in zip(declared, inputs, strict=True):
        for dim, spec in dims.items():
            size = int(tensor.shape[dim])
            high = spec.max
            if high is None or 2 * size <= high:
                sizes[spec.name] = 2 * size
            elif high != size:
                sizes[spec.name] = high
            else:
                sizes[spec.name] = max(spec.min or 2, 2)
    return sizes


def resized_inputs(
    declared: DynamicShapes, inputs: Sequence[torch.Tensor], sizes: Mapping[str, int]
) -> tuple[torch.Tensor, ...]:
    """``inputs`` with every declared dimension cut or tiled (repeating its values) to
    ``sizes[name]``: valid token ids stay valid ids and a mask stays a mask."""
    resized = []
    for dims, tensor in zip(declared, inputs, strict=True):
        for dim, spec in dims.items():
            tensor = _resize(tensor, dim, sizes[spec.name])
        resized.append(tensor.contiguous())
    return tuple(resized)


def _resize(tensor: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    current = tensor.shape[dim]
    if size <= current:
        return tensor.narrow(dim, 0, size)
    repeats = [1] * tensor.dim()
    repeats[dim] = -(-size // current)
    return tensor.repeat(*repeats).narrow(dim, 0, size)


def describe(declared: DynamicShapes | None) -> list[dict[str, Any]]:
    """JSON-ready: one ``{input, dim, name, min, max}`` per declared dimension (for reports)."""
    if not declared:
        return []
    return [
        {"input": index, "dim": dim, "name": spec.name, "min": spec.min, "max": spec.max}
        for index, dims in enumerate(declared)
        for dim, spec in dims.items()
    ]


_SUGGESTED = re.compile(r"(\w+) = Dim\('(\w+)'(?:, ([^)]*))?\)")


def explain_constraint_violation(exc: BaseException) -> str | None:
    """One line for export's "Constraints violated" error: which declared dimension the model
    fixes or bounds, and the declaration that export suggests; ``None`` for other errors."""
    text = str(exc)
    if "Constraints violated" not in text:
        return None
    suggestions = list(_SUGGESTED.finditer(text))
    specialised = re.findall(r"specialized it to be a constant \((\d+)\)", text)
    names = re.findall(r"Constraints violated \(([^)]*)\)", text)
    what = names[0] if names else "a declared dimension"
    if specialised:
        return (
            f"the model fixes {what} at {specialised[0]}: that dimension cannot be dynamic "
            "(remove it from the dynamic declaration)"
        )
    if suggestions:
        fixes = "; ".join(
            f"{m.group(2)}: {m.group(3) or 'derived from another dimension'}" for m in suggestions
        )
        return f"the model constrains {what}: declare it as export suggests ({fixes})"
    guard = re.search(r"satisfy the generated guard (.+?)\.?$", text, re.MULTILINE)
    needs = (
        re.sub(r"L\['(\w+)'\]\.size\(\)\[(\d+)\]", r"\1.shape[\2]", guard.group(1)) if guard else ""
    )
    return (
        f"the model constrains {what}"
        + (f": it needs {needs}" if needs else "")
        + "; give the dimension bounds (min, max) within which that holds"
    )
