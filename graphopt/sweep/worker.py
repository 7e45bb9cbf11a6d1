"""One variant, run as ``graphopt run`` runs a recipe, in a private folder; its files come back.

Why the files come back as bytes and are not written where the sweep caches them: a Ray task
may run on another machine, whose disk the driver cannot see. The driver writes the cache
(:mod:`graphopt.sweep.executor`), so a local run and a cluster run store the same thing.

A failing variant is a result, never an exception: ``status`` is ``failed`` for a graphopt
error (bad input, a pass that refuses) and ``error`` for anything else (a bug in graphopt or a
library), each with its one-line message. Ctrl-C still interrupts.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from graphopt.errors import GraphoptError
from graphopt.recipe import Recipe

__all__ = ["execute", "run_variant"]


def run_variant(recipe: Recipe, *, quiet: bool = True) -> dict[str, Any]:
    """Run ``recipe``; ``{status, error, seconds, host, files: {name: bytes}}``.

    ``quiet`` sends what torch and the runtimes print to the variant's ``graphopt.log``.
    """
    from graphopt.progress import library_noise_to

    started = time.monotonic()
    status, error = "ok", None
    with tempfile.TemporaryDirectory(prefix="graphopt-variant-") as tmp:
        folder = Path(tmp)
        try:
            with library_noise_to(folder / "graphopt.log", enabled=quiet):
                execute(recipe, folder)
        except GraphoptError as exc:
            status, error = "failed", _first_line(exc)
        except Exception as exc:  # a bug or a library failure: reported, the sweep goes on
            status, error = "error", f"internal error: {type(exc).__name__}: {_first_line(exc)}"
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    return {
        "status": status,
        "error": error,
        "seconds": time.monotonic() - started,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "files": files,
    }


def execute(recipe: Recipe, folder: Path) -> str:
    """What ``graphopt run`` does between loading the recipe and printing: compress, check the
    budgets, save ``model.pt2``/``model.onnx`` and the report into ``folder``; the status."""
    from graphopt.budgets import check_budgets
    from graphopt.cli import _save_model
    from graphopt.loading import load_callable, load_data, load_model
    from graphopt.provenance import sha256_json
    from graphopt.runner import compress

    evaluate = load_callable(recipe.evaluate, what="evaluate") if recipe.evaluate else None
    model, inputs = load_model(recipe.model, input_shape=recipe.input_shape, seed=recipe.seed)
    data = load_data(recipe.data, inputs, seed=recipe.seed) if recipe.data else None
    run = compress(
        model,
        inputs,
        recipe.build_passes(),
        backends=recipe.build_backends(),
        evaluate=evaluate,
        data=data,
        warmup=recipe.warmup,
        runs=recipe.runs,
        name=recipe.model,
        dynamic_shapes=recipe.dynamic,
    )
    as_run = recipe.as_run()
    report = dataclasses.replace(
        run.report,
        budgets=check_budgets(run.report, recipe.require),
        provenance={
            **run.report.provenance,
            "recipe": as_run,
            "recipe_sha256": sha256_json(as_run),
        },
    )
    _save_model(run.compressed, run.example_inputs, folder)
    report.write(folder)
    return report.status


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
