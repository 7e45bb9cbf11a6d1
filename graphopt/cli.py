"""The ``graphopt`` command: run a recipe, inspect a model, benchmark backends, list passes.

Bad input (unknown pass or option, bad shape, missing file, a factory that raises) ends with
one line on stderr and exit status 2, never a traceback (``--debug`` shows it), and leaves no
partial output and nothing of the user's touched: see :mod:`graphopt.output` for the rules.
A run whose budgets (``require:``) fail writes its artifacts, marked failing, and exits 3.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from graphopt.errors import GraphoptError, RecipeError
from graphopt.output import OutputFolder, Terminated, sigterm_raises

if TYPE_CHECKING:  # annotations only: the commands import their dependencies lazily
    from rich.console import Console
    from torch.fx import GraphModule

    from graphopt.pruning.groups import Member

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; bad input is one line on stderr and exit 2, a bug one line and exit 1.

    The first line of a graphopt error is all that is printed; what follows it (the user
    code's traceback, torch's capture log) is shown with ``--debug`` or ``GRAPHOPT_DEBUG=1``.
    """
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch-internal deprecations
    parser = _parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug or os.environ.get("GRAPHOPT_DEBUG"))
    try:
        with sigterm_raises():
            return int(args.handler(args) or 0)
    except GraphoptError as exc:
        first, _, rest = str(exc).partition("\n")
        print(f"graphopt: error: {first}", file=sys.stderr)
        if rest and debug:
            print(rest, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphopt: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("graphopt: terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # a bug in graphopt or a library: say so in one line
        if debug:
            traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1]
        print(
            f"graphopt: internal error: {type(exc).__name__}: {_first_line(exc)} "
            f"({Path(where.filename).name}:{where.lineno}); rerun with --debug for the "
            "traceback and report it",
            file=sys.stderr,
        )
        return 1


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


class _Parser(argparse.ArgumentParser):
    """argparse with graphopt's one-line errors (argparse prints the usage block first)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show tracebacks and torch's logs on errors"
    )
    parser = _Parser(prog="graphopt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", parents=[common], help="compress a model as a recipe says")
    run.add_argument("recipe", help="path to the recipe file (YAML or TOML)")
    run.add_argument("--output", help="output folder (overrides the recipe's)")
    run.add_argument(
        "--require",
        action="append",
        metavar="BUDGET",
        help="a budget such as 'speedup.onnxruntime>=2.5' (repeatable; adds to the recipe's)",
    )
    run.add_argument(
        "--json", action="store_true", help="print the summary as JSON on stdout (tables: stderr)"
    )
    run.set_defaults(handler=_cmd_run)

    sweep = sub.add_parser(
        "sweep", parents=[common], help="run a recipe's variants (options varied), pick the best"
    )
    sweep.add_argument("recipe", help="path to the recipe file, with a sweep: section")
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="KEY=V1,V2",
        help="a grid axis such as prune.target_macs=0.3,0.5 (repeatable; adds to the recipe's)",
    )
    sweep.add_argument("--samples", type=int, help="variants drawn from a random sweep")
    sweep.add_argument("--address", help="a Ray cluster (default: RAY_ADDRESS, else local)")
    sweep.add_argument("--num-cpus", type=int, help="CPUs of the local Ray runtime")
    sweep.add_argument("--cache-dir", help="variant cache (default ~/.cache/graphopt/sweep)")
    sweep.add_argument("--no-ray", action="store_true", help="run variants one after another")
    sweep.add_argument("--output", help="output folder (default: the recipe's output + -sweep)")
    sweep.add_argument(
        "--json", action="store_true", help="print the summary as JSON on stdout (tables: stderr)"
    )
    sweep.set_defaults(handler=_cmd_sweep)

    inspect = sub.add_parser(
        "inspect", parents=[common], help="capture a model and print its costs per node"
    )
    inspect.add_argument("model", help="zoo name or package.module:factory")
    inspect.add_argument("--input-shape", help="e.g. 1,3,224,224 (zoo models have a default)")
    inspect.add_argument("--top", type=int, default=15, help="heaviest nodes to list")
    inspect.add_argument(
        "--groups", action="store_true", help="also list the coupled channel-pruning groups"
    )
    inspect.set_defaults(handler=_cmd_inspect)

    bench = sub.add_parser(
        "bench", parents=[common], help="time a model on several backends, interleaved"
    )
    bench.add_argument("model", help="zoo name or package.module:factory")
    bench.add_argument("--backend", default="onnxruntime", help="comma list: torch,onnxruntime,tvm")
    bench.add_argument("--input-shape", help="e.g. 1,3,224,224")
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--runs", type=int, default=50)
    bench.add_argument("--tvm-trials", type=int, default=0, help="MetaSchedule trial budget")
    bench.set_defaults(handler=_cmd_bench)

    export = sub.add_parser(
        "export", parents=[common], help="write the ONNX file of a saved model (.pt2)"
    )
    export.add_argument("model", help="a .pt2 archive, e.g. the model.pt2 of graphopt run")
    export.add_argument("--onnx", required=True, help="the .onnx file to write")
    export.add_argument("--opset", type=int, default=18)
    export.add_argument("--input-shape", help="example input shape, if the archive has none")
    export.set_defaults(handler=_cmd_export)

    passes = sub.add_parser(
        "passes", parents=[common], help="list the registered passes and their options"
    )
    passes.add_argument("--json", action="store_true", help="the listing as JSON")
    passes.add_argument(
        "--schema", action="store_true", help="print the JSON Schema of recipe files"
    )
    passes.set_defaults(handler=_cmd_passes)
    return parser


# ---- commands -------------------------------------------------------------------------------
def _cmd_run(args: argparse.Namespace) -> int:
    """Compress as the recipe says; exit 3 (artifacts written, marked failing) if a budget fails."""
    import dataclasses
    import json

    from rich.console import Console

    from graphopt.budgets import check_budgets
    from graphopt.loading import load_callable, load_data, load_model
    from graphopt.progress import Progress, library_noise_to
    from graphopt.provenance import sha256_json
    from graphopt.recipe import load_recipe
    from graphopt.report import artifact_hashes
    from graphopt.runner import compress

    recipe = load_recipe(args.recipe)
    if args.require:
        recipe = recipe.with_requirements(args.require)
    output = Path(args.output) if args.output is not None else recipe.output
    folder_guard = OutputFolder(output)  # checked and staged now, before any work
    debug = bool(args.debug or os.environ.get("GRAPHOPT_DEBUG"))
    with (
        folder_guard as folder,
        library_noise_to(folder / "graphopt.log", enabled=not debug) as stderr,
        Progress(stderr) as say,
    ):
        evaluate = load_callable(recipe.evaluate, what="evaluate") if recipe.evaluate else None
        say(f"loading {recipe.model}")
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
            progress=say,
            dynamic_shapes=recipe.dynamic,
        )
        as_run = recipe.as_run()
        report = dataclasses.replace(
            run.report,
            budgets=check_budgets(run.report, recipe.require),
            provenance={
                **run.report.provenance,
                "recipe_file": str(args.recipe),
                "recipe": as_run,
                "recipe_sha256": sha256_json(as_run),
            },
        )
        say("saving the compressed model and the report")
        _save_model(run.compressed, run.example_inputs, folder)
        written = report.write(folder)
        artifacts = artifact_hashes(folder)
        folder_guard.status = report.status
    tables = Console(stderr=True) if args.json else Console()
    report.print(tables)
    names = [p.name for p in written] + ["model.pt2", "model.onnx"]
    if args.json:
        summary = {**report.summary(artifacts), "output": str(output), "files": names}
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {', '.join(str(output / n) for n in names)}")
    return 3 if report.status == "failed" else 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    """Run the sweep; exit 3 (report written) when no variant finished or meets every budget."""
    import json

    from rich.console import Console

    from graphopt.progress import Progress, library_noise_to
    from graphopt.recipe import load_recipe, with_sweep
    from graphopt.sweep.run import sweep

    recipe = load_recipe(args.recipe)
    options = _sweep_options(recipe, args)
    recipe = with_sweep(recipe, options)  # every variant validated now, before any work
    output = Path(args.output or options.output or f"{recipe.output}-sweep")
    folder_guard = OutputFolder(output)  # checked and staged now, before any work
    debug = bool(args.debug or os.environ.get("GRAPHOPT_DEBUG"))
    with (
        folder_guard as folder,
        library_noise_to(folder / "graphopt.log", enabled=not debug) as stderr,
        Progress(stderr) as say,
    ):
        report, written = sweep(
            recipe,
            folder,
            recipe_file=str(args.recipe),
            cache_dir=args.cache_dir,
            address=args.address,
            use_ray=not args.no_ray,
            say=say,
            note=lambda text: print(f"graphopt: note: {text}", file=stderr, flush=True),
        )
        status = "passed" if report.chosen else "failed"
        folder_guard.status = status
    summary = {
        "status": status,
        "chosen": report.chosen,
        "counts": report.to_dict()["counts"],
        "pareto_front": report.front,
        "budgets": report.budgets,
        "output": str(output),
        "files": [p.name for p in written],
    }
    report.print(Console(stderr=True) if args.json else Console())
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"wrote {', '.join(str(output / p.name) for p in written)}")
    return 0 if report.chosen else 3


def _sweep_options(recipe: Any, args: argparse.Namespace) -> Any:
    """The recipe's ``sweep:`` with ``--grid``/``--samples``/``--num-cpus`` applied."""
    import yaml

    from graphopt.sweep.spec import parse_sweep

    data = recipe.sweep.model_dump(exclude_defaults=True) if recipe.sweep else {}
    if args.grid:
        if data.get("random"):
            raise RecipeError("--grid cannot extend the recipe's random sweep; use grid: there")
        grid = dict(data.get("grid") or {})
        for item in args.grid:
            key, sep, values = item.partition("=")
            if not sep or not key.strip() or not values.strip():
                raise RecipeError(
                    f"--grid takes KEY=V1,V2 such as prune.ratio=0.3,0.5; got {item!r}"
                )
            grid[key.strip()] = [yaml.safe_load(v) for v in values.split(",")]
        data["grid"] = grid
    if args.samples is not None:
        if not data.get("random"):
            raise RecipeError("--samples needs a random sweep (sweep: {random: {...}})")
        data["samples"] = args.samples
    if args.num_cpus is not None:
        data["num_cpus"] = args.num_cpus
    if not data:
        raise RecipeError(
            f"recipe {args.recipe!r} has no sweep: section; add one or give --grid KEY=V1,V2"
        )
    return parse_sweep(data)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from graphopt.analysis import analyze
    from graphopt.capture import trace
    from graphopt.loading import load_model

    if args.top < 0:
        raise RecipeError(f"--top must be >= 0, got {args.top}")
    model, inputs = load_model(args.model, input_shape=args.input_shape)
    gm = trace(model, inputs)
    stats = analyze(gm)
    table = Table(title=f"{args.model}: heaviest {args.top} nodes by MACs (per sample)")
    for col in ("node", "op", "module", "output shape", "MACs", "params"):
        table.add_column(col)
    for node in sorted(stats.nodes, key=lambda n: n.macs, reverse=True)[: args.top]:
        table.add_row(
            node.name,
            node.op,
            node.module,
            str(node.output_shape),
            f"{node.macs:,}",
            f"{node.params:,}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"params {stats.params:,}  MACs {stats.macs:,}  size {stats.size_bytes:,} B "
        f"{stats.size_by_dtype}  peak activations {stats.peak_activation_bytes:,} B"
    )
    if args.groups:
        _print_groups(console, args.model, gm)
    return 0


def _print_groups(console: Console, model: str, gm: GraphModule) -> None:
    """The pruning groups: coupled layers whose channels go together, and what is frozen."""
    from rich.table import Table

    from graphopt.pruning import find_groups

    groups = find_groups(gm)
    table = Table(title=f"{model}: channel-pruning groups (coupled layers prune together)")
    table.add_column("group", no_wrap=True)
    table.add_column("units", justify="right")
    table.add_column("ch/unit", justify="right")
    table.add_column("member layers, by role", overflow="fold", ratio=3)
    table.add_column("frozen", overflow="fold", ratio=2)
    for g in groups:
        widths = sorted(set(g.widths))
        if g.frozen:
            frozen = f"all: {'; '.join(g.frozen_reasons)}"
        elif g.frozen_units:
            frozen = f"{len(g.frozen_units)} of {g.num_units}: {'; '.join(g.frozen_reasons)}"
        else:
            frozen = "-"
        table.add_row(
            g.id,
            str(g.num_units),
            str(widths[0]) if len(widths) == 1 else "mixed",
            _members_by_role(g.members),
            frozen,
        )
    console.print(table)
    frozen = sum(g.frozen for g in groups)
    partial = sum(bool(g.frozen_units) and not g.frozen for g in groups)
    console.print(
        f"{len(groups)} groups: {len(groups) - frozen - partial} prunable, "
        f"{partial} partially frozen, {frozen} frozen"
    )


def _members_by_role(members: Sequence[Member]) -> str:
    """``out: conv1, layer1.0.conv2; norm: bn1, …`` (roles as in ``graphopt.pruning.groups``)."""
    by_role: dict[str, list[str]] = {}
    for m in members:
        names = by_role.setdefault(m.role, [])
        name = m.module or m.node
        if name not in names:  # several views of one attention module: name it once
            names.append(name)
    return "; ".join(f"{role}: {', '.join(names)}" for role, names in by_role.items())


def _cmd_bench(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from graphopt.backends import get_backend
    from graphopt.backends.compare import bench_backends
    from graphopt.capture import trace
    from graphopt.loading import load_model
    from graphopt.progress import Progress
    from graphopt.recipe import check_bench_counts

    check_bench_counts(args.warmup, args.runs, where="bench")
    if args.tvm_trials < 0:
        raise RecipeError(f"--tvm-trials must be >= 0, got {args.tvm_trials}")
    names = [n.strip() for n in args.backend.split(",") if n.strip()]
    if not names:
        raise RecipeError("--backend needs at least one backend name")
    backends = [get_backend("torch")] + [
        get_backend(n, trials=args.tvm_trials) if n == "tvm" else get_backend(n)
        for n in names
        if n != "torch"
    ]
    model, inputs = load_model(args.model, input_shape=args.input_shape)
    with Progress(sys.stderr) as say:
        say("capturing")
        gm = trace(model, inputs)
        say(f"compiling and timing on {', '.join(b.name for b in backends)}")
        comparison = bench_backends(gm, inputs, backends, warmup=args.warmup, runs=args.runs)
    table = Table(title=f"{args.model}: latency per backend (interleaved, one run)")
    for col in ("backend", "median ms", "p90 ms", "speed-up vs torch", "max rel diff", "notes"):
        table.add_column(col)
    for name, res in comparison.results.items():
        notes = ", ".join(f"{k}={v}" for k, v in res.info.items() if k in ("tuned", "trials"))
        table.add_row(
            name,
            f"{res.latency.median_ms:.3f}",
            f"{res.latency.p90_ms:.3f}",
            f"{comparison.speedups[name]:.2f}",
            f"{res.max_rel_diff:.1e}",
            notes,
        )
    Console().print(table)
    return 0


def _cmd_passes(args: argparse.Namespace) -> int:
    """The registered passes with each option's type, range, default and meaning."""
    import json

    from graphopt.passes import describe_passes

    if args.schema:
        from graphopt.recipe import recipe_schema

        print(json.dumps(recipe_schema(), indent=1))
        return 0
    rows = describe_passes()
    if args.json:
        print(json.dumps(rows, indent=1, default=repr))
        return 0
    for row in rows:
        kind = "exact" if row["exact"] else "approximate"
        print(f"{row['name']}  ({kind})  {row['summary']}")
        for key, option in row["options"].items():
            default = "required" if option["required"] else f"default {option['default']!r}"
            help_text = f" — {option['help']}" if option["help"] else ""
            print(f"    {key}: {option['type']}; {default}{help_text}")
        if not row["options"]:
            print("    no options")
    return 0


def _save_model(gm: object, inputs: tuple, folder: Path) -> None:
    """Save the compressed graph as a torch.export archive (no pickled code) and as ONNX;
    the ONNX file is loaded once in ONNX Runtime, so what is shipped is known to load."""
    from graphopt.artifacts import save
    from graphopt.backends import get_backend

    save(gm, inputs, folder / "model.pt2")
    get_backend("onnxruntime", onnx_path=folder / "model.onnx").compile(gm, inputs)


def _cmd_export(args: argparse.Namespace) -> int:
    """``graphopt export MODEL.pt2 --onnx OUT.onnx``: the ONNX file of a saved model."""
    from graphopt.artifacts import export_onnx, load_program

    program = load_program(args.model)
    inputs, _ = program.example_inputs or ((), {})
    if args.input_shape:
        import torch

        from graphopt.loading import parse_shape

        shape = parse_shape(args.input_shape)
        inputs = (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)
    if not inputs:
        raise RecipeError(f"{args.model!r} stores no example inputs: give --input-shape")
    onnx = Path(args.onnx)
    if onnx.suffix != ".onnx" or onnx.is_dir():
        raise RecipeError(f"--onnx must name a .onnx file, got {args.onnx!r}")
    export_onnx(program.module(), tuple(inputs), onnx, opset=args.opset)
    print(f"wrote {onnx}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
