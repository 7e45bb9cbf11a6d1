"""``graphopt sweep``: run a recipe's variants (pass options varied) and pick the best.

- ``spec``: the recipe's ``sweep:`` section (grid or random space, budgets, Ray resources);
- ``variants``: the variants, validated when the recipe loads and keyed by their recipe's hash;
- ``worker``: one variant run as ``graphopt run`` would, its files returned as bytes (so a Ray
  task on another machine needs no shared disk);
- ``executor``: the on-disk cache and the runners: Ray tasks, or one after another without Ray;
- ``report``: the table, the Pareto front, the best variant per budget (sweep.json/.md/.png).

Only ``spec`` is imported here: ``graphopt.recipe`` needs it, and the rest imports the recipe.
"""

from graphopt.sweep.spec import Range, Resources, SweepOptions, parse_sweep

__all__ = ["Range", "Resources", "SweepOptions", "parse_sweep"]
