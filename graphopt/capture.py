"""Capture a PyTorch model as graphopt's IR: the ATen-level FX graph of ``torch.export``.

Why torch.export (non-strict) and not ``torch.fx.symbolic_trace``: symbolic tracing fails on
every HF transformers model (transformers 5 ships no FX tracer) and on models with
tensor-dependent Python, while non-strict export runs the real Python and records ATen ops.
It is also the graph that TVM (``from_exported_program``), the ONNX exporter and PT2E consume,
so every pass matches ATen ops (``aten.conv2d``, ``aten.linear``, ``aten.batch_norm``, …),
never ``nn.Module`` types.
"""

from __future__ import annotations

import copy
import linecache
import traceback
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.fx import GraphModule

from graphopt.errors import CaptureError, GraphoptError
from graphopt.ir import paused_gc
from graphopt.shapes import (
    META_KEY,
    DynamicShapes,
    declared_shapes,
    explain_constraint_violation,
    export_dynamic_shapes,
    parse_dynamic_shapes,
)

__all__ = [
    "as_input_tuple",
    "at_least_batch_two",
    "export_program",
    "trace",
]

# Layers whose forward differs between training and eval (torch's own); user code that reads
# ``self.training`` is put in eval mode too, but only these make the difference certain.
_TRAINING_MODE_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.modules.dropout._DropoutNd,
    nn.MultiheadAttention,
)

_TORCH_DIR_MARKERS = ("/torch/", "/site-packages/torch", "/graphopt/capture.py")


def as_input_tuple(
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    error: type[GraphoptError] = CaptureError,
) -> tuple[torch.Tensor, ...]:
    """Normalise one tensor or a sequence of tensors to a tuple; raise ``error`` otherwise."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, Sequence) and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise error(
        "example_inputs must be a tensor or a tuple of tensors, got "
        f"{type(example_inputs).__name__}"
    )


def trace(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    *,
    dynamic_batch: bool = True,
    dynamic_shapes: object = None,
) -> GraphModule:
    """Capture ``model`` with ``torch.export`` (non-strict) and return its FX GraphModule.

    The model is deep-copied first, so the caller's module is never touched. The copy is
    captured in eval mode: a model left in training mode would otherwise be compressed with
    batch-statistics BatchNorm and live dropout baked into the graph, and measured as such
    (a ``UserWarning`` says so; the caller's flag is unchanged). With ``dynamic_batch`` the
    first dimension of every input is symbolic (a batch of 1 is repeated to 2 for capture,
    since export specialises size-1 dimensions). ``dynamic_shapes`` declares more symbolic
    dimensions, e.g. ``({1: "seq"}, {1: "seq"})`` (see ``graphopt.shapes``); the declaration is
    kept in ``gm.meta`` so every later export keeps them. The returned module has parameters as
    ``get_attr`` nodes under their original names and ``node.meta["val"]`` /
    ``node.meta["nn_module_stack"]`` on every op node.

    Raises ``CaptureError`` when forward fails on the example inputs, returns something that
    is not tensors (see ``_check_eager_outputs``), or cannot be exported. Its message's first
    line is graphopt's explanation (module, source line, how to proceed); the torch detail
    follows on later lines, which the CLI shows only with ``--debug``.
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = as_input_tuple(example_inputs)
    try:
        declared = parse_dynamic_shapes(dynamic_shapes, inputs)
    except GraphoptError as exc:
        raise CaptureError(str(exc)) from exc
    model_copy = copy.deepcopy(model)
    mode_dependent = [
        name or type(model).__name__
        for name, m in model.named_modules()
        if m.training and isinstance(m, _TRAINING_MODE_LAYERS)
    ]
    model_copy.eval()
    if mode_dependent:  # a warning only where the mode changes results, not for every Linear
        warnings.warn(
            f"graphopt: the {type(model).__name__} was in training mode ({mode_dependent[0]} "
            f"and {len(mode_dependent) - 1} other layer(s) behave differently in training); "
            "it was captured in eval mode (BatchNorm with running statistics, no dropout) on "
            "a copy, and your model keeps its flag. Call model.eval() before capture.",
            UserWarning,
            stacklevel=2,
        )
    with _module_call_stack(model_copy) as stack, paused_gc():
        _check_eager_outputs(model_copy, inputs, stack)
        try:
            program = export_program(
                model_copy, inputs, dynamic_batch=dynamic_batch, declared=declared
            )
        except (Exception, SystemExit) as exc:  # SystemExit: a model calling sys.exit()
            constraint = explain_constraint_violation(exc) if declared else None
            if constraint:
                raise CaptureError(f"dynamic_shapes: {constraint}") from exc
            raise CaptureError(_explain_failure(model_copy, exc, stack)) from exc
    if dynamic_batch:
        inputs = tuple(at_least_batch_two(t) for t in inputs)
    graph_module = program.module()
    graph_module.meta["graphopt_example_inputs"] = tuple(t.detach().clone() for t in inputs)
    graph_module.meta["graphopt_source_class"] = type(model).__name__
    if declared:
        graph_module.meta[META_KEY] = declared
    return graph_module


def export_program(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    *,
    dynamic_batch: bool = True,
    declared: DynamicShapes | None = None,
) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) with dimension 0 of every input dynamic when possible.

    ``Dim.AUTO`` lets export keep the batch static where the model specialises it instead of
    failing; a batch of 1 is repeated to 2 because export always specialises size-1 dims.
    ``declared`` dimensions (default: those the captured ``module`` was declared with) are
    named ``Dim``s, so export fails rather than fixing one. Used for capture and to re-export
    a rewritten graph (saving, backends).
    """
    declared = declared if declared is not None else declared_shapes(module)
    if dynamic_batch:
        inputs = tuple(at_least_batch_two(t) for t in inputs)
    dynamic_shapes = export_dynamic_shapes(declared, inputs, dynamic_batch=dynamic_batch)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes, strict=False)


def at_least_batch_two(tensor: torch.Tensor) -> torch.Tensor:
    """Repeat a batch of 1 to 2: export specialises size-1 dimensions, so 1 can't stay dynamic."""
    if tensor.dim() > 0 and tensor.shape[0] == 1:
        return tensor.repeat(2, *([1] * (tensor.dim() - 1)))
    return tensor


@contextmanager
def _module_call_stack(model: nn.Module) -> Iterator[list[str]]:
    """Record which submodule is executing, so a capture failure can name it."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        label = name or "<root>"

        def pre_hook(_m: nn.Module, _args: object, _label: str = label) -> None:
            stack.append(_label)

        def post_hook(_m: nn.Module, _args: object, _out: object) -> None:
            if stack:
                stack.pop()

        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _check_eager_outputs(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], stack: list[str]
) -> None:
    """Run ``model`` once in eager mode and refuse outputs that hold anything but tensors.

    Why eagerly, before export: export accepts a forward returning a string, an int or None
    (they become constants of the graph), and graphopt would then report 0 MACs and compare
    nothing; and a forward that fails on the example inputs is a bug in the model or the
    inputs, which deserves that diagnosis rather than one phrased as a capture limitation.
    One no-grad forward costs far less than the export that follows. ``None`` leaves beside
    tensors are accepted (optional outputs, as HF models return them): every consumer keeps
    only the tensor leaves, and there is no value in None to lose.
    """
    try:
        with torch.no_grad():
            output = model(*(t.clone() for t in inputs))  # clones: forward may write in place
    except (Exception, SystemExit) as exc:  # SystemExit: a model calling sys.exit()
        raise CaptureError(_explain_failure(model, exc, stack, eager=True)) from exc
    leaves, _ = torch.utils._pytree.tree_flatten(output)
    tensors = [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]
    others = sorted({type(leaf).__name__ for leaf in leaves if not _tensor_or_none(leaf)})
    if tensors and not others:
        return
    name = type(output).__name__
    if not isinstance(output, list | tuple | dict):
        what = name
    elif not leaves:
        what = f"an empty {name}"
    else:
        what = f"a {name} with {', '.join(others) or 'no tensor'} leaves"
    raise CaptureError(
        f"the model's forward returned {what}; graphopt needs a tensor or a tuple/list/dict "
        "of tensors. How to proceed: wrap the model in a module whose forward returns only "
        "the tensors to compress."
    )


def _tensor_or_none(leaf: object) -> bool:
    return leaf is None or isinstance(leaf, torch.Tensor)


def _explain_failure(
    model: nn.Module, exc: BaseException, stack: list[str], *, eager: bool = False
) -> str:
    """graphopt's explanation on the first line, the torch detail after it.

    The first line names the module, the user's source line, the exception's first line and
    how to proceed; it is all a user needs and all the CLI prints without ``--debug``. The
    full traceback (often 20+ lines of torch internals) follows on later lines.
    """
    module_path = stack[-1] if stack else "<root>"
    try:
        module_type = type(model.get_submodule("" if module_path == "<root>" else module_path))
        module_desc = f"{module_path} ({module_type.__name__})"
    except AttributeError:
        module_desc = module_path
    where = _user_frame(exc)
    text = str(exc)
    cause = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if isinstance(exc, SystemExit):
        hint = "forward called sys.exit() (or raised SystemExit); remove that from forward"
    elif eager:
        hint = "fix forward or the example inputs so that model(*example_inputs) runs"
    else:
        hint = _capture_hint(exc, text)
    if eager:
        what = "the model's forward fails on the example inputs in eager mode"
    else:
        what = "could not capture the model"
    summary = _one_line(
        f"{what}, at module {module_desc}, {where}: {type(exc).__name__}: {cause}. "
        f"How to proceed: {hint}."
    )
    detail = "".join(traceback.format_exception(exc)).rstrip()
    return f"{summary}\ntorch detail:\n{detail}"


def _capture_hint(exc: BaseException, text: str) -> str:
    if (
        "data-dependent" in text
        or "GuardOnDataDependent" in type(exc).__name__
        or "Could not guard" in text
    ):
        return (
            "the forward branches on a tensor's value; rewrite it with torch.where/torch.cond, "
            "or move the branch out of forward"
        )
    if "Unsupported" in type(exc).__name__ or "not supported" in text:
        return "replace the unsupported call, or wrap it in a custom op (torch.library.custom_op)"
    return "check that forward runs on the example inputs in eager mode, then simplify that line"


def _one_line(text: str) -> str:
    """Join the lines of ``text`` (a file name, a torch message) so the summary is one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _user_frame(exc: BaseException) -> str:
    """The innermost traceback frame outside torch: the user's source line."""
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not any(m in f.filename for m in _TORCH_DIR_MARKERS)]
    if not user:
        return "source line unknown"
    frame = user[-1]
    code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f"{frame.filename}:{frame.lineno} `{code}`"
