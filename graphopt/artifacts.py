"""Saving and loading compressed models: ``save``/``load`` (.pt2) and ``export_onnx``.

``.pt2`` is the ``torch.export`` archive: the graph as serialised JSON, weights as raw tensor
payloads and the example inputs; loading it gives back a trainable ``GraphModule``, with no
Python code of the user's to import. torch's loader may unpickle objects it finds in an
archive (tensor subclasses, custom constants); :func:`load` forbids that, so a ``.pt2`` from
elsewhere cannot run code when loaded: only plain tensors are accepted.

``.onnx`` is the file ONNX Runtime and other deployment toolchains read (dynamo exporter, batch
dimension symbolic where the graph allows).
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.fx import GraphModule

from graphopt.capture import as_input_tuple, export_program
from graphopt.errors import GraphoptError

__all__ = ["export_onnx", "load", "load_program", "save"]


def save(
    gm: torch.nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], path: str | Path
) -> Path:
    """Write ``gm`` as a ``torch.export`` archive (``.pt2``); returns the path."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise GraphoptError(f"save writes a .pt2 archive; got {str(path)!r} (use export_onnx)")
    inputs = as_input_tuple(example_inputs, error=GraphoptError)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export_program(gm, inputs), path)
    return path


def export_onnx(
    gm: torch.nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    opset: int = 18,
) -> Path:
    """Write ``gm`` as ONNX (the dynamo exporter, as the onnxruntime backend does)."""
    from graphopt.backends.base import describe_model
    from graphopt.backends.onnxruntime import export_onnx_file

    path = Path(path)
    inputs = as_input_tuple(example_inputs, error=GraphoptError)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_onnx_file(gm, inputs, path, opset, describe_model(gm))
    return path


def load_program(path: str | Path) -> torch.export.ExportedProgram:
    """The ``ExportedProgram`` of a ``.pt2`` archive, refusing anything that would unpickle."""
    path = Path(path)
    if not path.is_file():
        raise GraphoptError(f"model archive {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise GraphoptError(f"{str(path)!r} is not a torch.export archive (.pt2)")
    try:
        with _plain_tensors_only():
            return torch.export.load(path)
    except pickle.UnpicklingError as exc:
        raise GraphoptError(
            f"{str(path)!r} holds pickled Python objects, which graphopt.load refuses to "
            "unpickle (they could run code); only plain tensors are accepted"
        ) from exc
    except GraphoptError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphoptError(f"cannot load {str(path)!r}: {type(exc).__name__}: {first}") from exc


def load(path: str | Path) -> GraphModule:
    """A ``.pt2`` archive (as ``save`` or ``graphopt run`` wrote it) → ``GraphModule``."""
    return load_program(path).module()


@contextmanager
def _plain_tensors_only() -> Iterator[None]:
    """Make every ``torch.load`` inside the archive loader use ``weights_only=True``."""
    original = torch.load

    @functools.wraps(original)
    def safe_load(*args: object, **kwargs: object) -> object:
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original
