"""``graphopt sweep``'s job: variants → results (cached, Ray or sequential) → one report.

The chosen variant's files (``model.pt2``, ``model.onnx``, ``report.*``) are copied from its
cache entry into the output folder, so a sweep's folder holds what ``graphopt run`` would have
written for that variant, plus ``sweep.json``, ``sweep.md`` and ``sweep.png``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from graphopt.errors import RecipeError
from graphopt.provenance import now_iso, sha256_json
from graphopt.recipe import Recipe
from graphopt.sweep.executor import Cache, default_cache_root, run_variants
from graphopt.sweep.report import SweepReport, build_report
from graphopt.sweep.variants import expand, sweep_budgets

__all__ = ["CHOSEN_FILES_SKIPPED", "sweep"]

CHOSEN_FILES_SKIPPED = ("graphopt.log", "variant.json")


def sweep(
    recipe: Recipe,
    folder: Path,
    *,
    recipe_file: str | None = None,
    cache_dir: str | Path | None = None,
    address: str | None = None,
    use_ray: bool = True,
    say: Callable[[str], None] = lambda _m: None,
    note: Callable[[str], None] = lambda _m: None,
) -> tuple[SweepReport, list[Path]]:
    """Run ``recipe.sweep`` and write its report (and the chosen model) into ``folder``."""
    options = recipe.sweep
    if options is None:
        raise RecipeError("the recipe has no sweep: section; add one or give --grid KEY=V1,V2")
    variants = expand(recipe, options)
    requirements = sweep_budgets(recipe, options)
    root = Path(cache_dir or options.cache_dir or default_cache_root()).expanduser()
    started, t0 = now_iso(), time.monotonic()
    results, how = run_variants(
        variants, options, Cache(root), say=say, note=note, address=address, use_ray=use_ray
    )
    base = recipe.as_run()
    context: dict[str, Any] = {
        "recipe_file": recipe_file,
        "recipe_sha256": sha256_json(base),
        "axes": options.model_dump(include={"grid", "random", "samples", "seed"}),
        "cache": str(root),
        **how,
        "started_at": started,
        "finished_at": now_iso(),
        "wall_s": time.monotonic() - t0,
    }
    report = build_report(results, requirements, context)
    written = report.write(folder)
    chosen = next((r for r in results if r.variant.name == report.chosen), None)
    if chosen is not None and chosen.folder is not None:
        for path in sorted(chosen.folder.iterdir()):
            if path.is_file() and path.name not in CHOSEN_FILES_SKIPPED:
                shutil.copy2(path, folder / path.name)
                written.append(folder / path.name)
    return report, written
