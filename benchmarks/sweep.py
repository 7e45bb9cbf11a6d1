"""Wall time of a 6-variant sweep on the digits task: one after another vs a local Ray runtime.

    python benchmarks/sweep.py            # prints the table
    python benchmarks/sweep.py --write    # also writes its section of benchmarks/RESULTS.md

The variants prune the trained digits ResNet to six MACs targets and measure accuracy and ONNX
Runtime latency (one intra-op thread, so two variants fit two cores). Each mode runs with a
fresh cache, then the Ray sweep is repeated to time a fully cached one. Overhead per variant is
what Ray adds beyond the variants' own work: ``(wall × slots − Σ variant seconds) / n`` (the
runtime's start, worker start-up and torch imports, scheduling and shipping files back).
Numbers are one run on a shared machine: the ratio matters, not the seconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _results import write_section  # benchmarks/ is sys.path[0] when run as a script

from graphopt.recipe import parse_recipe
from graphopt.sweep.run import sweep

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADING = "## Sweeps: sequential vs local Ray"
TARGETS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def recipe(cache: Path, num_cpus: int) -> object:
    return parse_recipe(
        {
            "model": "graphopt.tasks.digits:trained_model",
            "input_shape": [1, 1, 32, 32],
            "evaluate": "graphopt.tasks.digits:accuracy",
            "passes": [{"prune": {"importance": "l2", "target_macs": 0.5, "round_to": 8}}],
            "backends": [{"onnxruntime": {"intra_op_threads": 1}}],
            "benchmark": {"warmup": 5, "runs": 50},
            "sweep": {
                "grid": {"prune.target_macs": TARGETS},
                "budgets": ["macs_ratio >= 2", "speedup.onnxruntime >= 1.5"],
                "resources": {"num_cpus": 1},
                "num_cpus": num_cpus,
                "cache_dir": str(cache),
            },
        }
    )


def timed(cache: Path, *, use_ray: bool, num_cpus: int) -> tuple[float, object]:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        report, _ = sweep(
            recipe(cache, num_cpus),
            Path(out),
            use_ray=use_ray,
            say=lambda m: print(m, file=sys.stderr),
            note=lambda m: print(m, file=sys.stderr),
        )
        return time.perf_counter() - start, report


def _f(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="write RESULTS.md's section")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        seq_s, seq = timed(root / "seq", use_ray=False, num_cpus=args.num_cpus)
        ray_s, par = timed(root / "ray", use_ray=True, num_cpus=args.num_cpus)
        cached_s, _ = timed(root / "ray", use_ray=True, num_cpus=args.num_cpus)
    n = len(TARGETS)
    seq_work = sum(r["seconds"] for r in seq.rows)
    ray_work = sum(r["seconds"] for r in par.rows)
    slots = max(1, int(par.context.get("cpus", args.num_cpus)))
    overhead = (ray_s * slots - ray_work) / n
    rows = [
        ("sequential (in process)", seq_s, seq_work / n, "-"),
        (f"local Ray ({slots} CPUs, 1 per variant)", ray_s, ray_work / n, f"{overhead:.1f}"),
        ("local Ray, repeated (all cached)", cached_s, 0.0, "-"),
    ]
    chosen = {b["budget"]: b["best"] for b in par.budgets}
    best = next(r for r in par.rows if r["name"] == par.chosen) if par.chosen else None
    lines = [
        HEADING,
        "",
        f"`python benchmarks/sweep.py --write`: {n} variants of the digits ResNet "
        f"(`prune.target_macs` in {TARGETS}, accuracy and ONNX Runtime latency each), "
        "2 shared vCPUs. Overhead per variant: `(wall × slots − Σ variant seconds) / n`. "
        "No `recover`: pruned, the digits net is near chance until fine-tuned "
        "(`examples/digits.yaml`), so this measures what a sweep costs, not what to ship.",
        "",
        "| mode | wall s | s per variant (inside) | Ray overhead s per variant |",
        "|---|---|---|---|",
        *[f"| {m} | {w:.1f} | {v:.1f} | {o} |" for m, w, v, o in rows],
        "",
        "| variant | prune.target_macs | accuracy % | MACs a/a* | ORT speed-up | Pareto |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['name']} | {r['assignments']['prune.target_macs']} | {_f(r.get('score'))} | "
            f"{_f(r.get('macs_ratio'))} | {_f(r.get('speedup'))} | "
            f"{'yes' if r.get('pareto') else ''} |"
            for r in par.rows
        ],
        "",
        f"Speed-up of Ray over sequential: {seq_s / ray_s:.2f}x. Budgets: "
        + ", ".join(f"`{b}` → {v}" for b, v in chosen.items())
        + (
            f"; chosen {best['name']} ({best['settings']}: accuracy {best['score']:.2f} %, "
            f"MACs ÷ {best['macs_ratio']:.2f}, ORT speed-up {best['speedup']:.2f}x)."
            if best
            else "."
        ),
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(section, HEADING, RESULTS)


if __name__ == "__main__":
    main()
