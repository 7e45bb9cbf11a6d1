"""The CLI against hostile input, as a subprocess: one line, exit 2, nothing lost, nothing left.

Every case runs ``python -m graphopt.cli`` in a scratch project folder that holds the user's own
files (and the recipe). It must end with exit status 2 and exactly one line on stderr with no
traceback; afterwards the scratch tree must hold exactly the files it held before, byte for
byte: no output folder, no temporary folder, no user file touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

BASE_RECIPE: dict[str, object] = {
    "model": "tests.hostile:tiny",
    "passes": [],
    "backends": [],
    "benchmark": {"warmup": 0, "runs": 1},
    "output": "out",
}


@dataclass(frozen=True)
class Case:
    id: str
    expect: str  # a fragment of the one error line
    recipe: dict[str, object] | bytes | str | None = None  # written to recipe.yaml
    argv: tuple[str, ...] = ("run", "recipe.yaml")
    setup: Callable[[Path], None] | None = None  # more files in the project folder
    recipe_name: str = "recipe.yaml"
    extra: dict[str, object] = field(default_factory=dict)  # merged into BASE_RECIPE


def _user_folder(name: str) -> Callable[[Path], None]:
    def setup(project: Path) -> None:
        (project / name).mkdir()
        (project / name / "thesis.txt").write_text("years of work")

    return setup


def _symlink_to_user_folder(project: Path) -> None:
    _user_folder("data")(project)
    (project / "out").symlink_to(project / "data")


def _file_named_out(project: Path) -> None:
    (project / "out").write_text("a file, not a folder")


def _deep_yaml() -> str:
    return "model: " + "[" * 20000 + "]" * 20000


CASES = [
    # -- the recipe file itself
    Case("missing-recipe", "does not exist", argv=("run", "nope.yaml")),
    Case(
        "recipe-is-a-folder", "is a folder", argv=("run", "somedir"), setup=_user_folder("somedir")
    ),
    Case("random-bytes", "not UTF-8", recipe=bytes(range(256)) * 4),
    Case("nul-bytes", "NUL", recipe=b"model: tiny\x00\x00"),
    Case("empty-recipe", "must be a mapping", recipe=""),
    Case("yaml-list", "must be a mapping", recipe="- a\n- b\n"),
    Case("bad-yaml", "not valid YAML", recipe="model: [unclosed\n"),
    Case("deep-nesting", "nested too deeply", recipe=_deep_yaml()),
    Case("duplicate-key", "duplicate key 'passes'", recipe="model: x\npasses: []\npasses: []\n"),
    Case(
        "upper-case-toml",
        "not valid TOML",
        recipe="model = \n",
        recipe_name="recipe.TOML",
        argv=("run", "recipe.TOML"),
    ),
    Case("unknown-key", "unknown recipe key 'pases'", extra={"pases": []}),
    # -- values in the recipe
    Case("shape-bool", "input shape", extra={"input_shape": [1, 3, True, 8]}),
    Case("shape-float", "input shape", extra={"input_shape": [1, 3, 32.7, 8]}),
    Case("shape-empty", "input shape", extra={"input_shape": []}),
    Case("shape-text", "input shape", extra={"input_shape": "1,3,abc"}),
    Case("shape-huge", "more than the", extra={"input_shape": [1, 3, 100000, 100000]}),
    Case("seed-huge", "'seed' must be an integer", extra={"seed": 2**70}),
    Case("seed-bool", "'seed' must be an integer", extra={"seed": True}),
    Case("output-number", "'output' must be a folder path", extra={"output": 123}),
    Case("runs-zero", "runs in [1, 100000]", extra={"benchmark": {"runs": 0}}),
    Case("runs-bool", "runs in [1, 100000]", extra={"benchmark": {"runs": True}}),
    Case("unknown-pass", "unknown pass", extra={"passes": ["fold_bathnorm"]}),
    Case("unknown-option", "prune", extra={"passes": [{"prune": {"ratioo": 0.5}}]}),
    # -- the user's code
    Case("factory-3-tuple", "tuple of 3", extra={"model": "tests.hostile:three_tuple"}),
    Case("factory-sysexit", "SystemExit", extra={"model": "tests.hostile:exits"}),
    Case("factory-raises", "the factory is broken", extra={"model": "tests.hostile:raises"}),
    Case("factory-not-module", "not nn.Module", extra={"model": "tests.hostile:not_a_module"}),
    Case("import-raises", "broken at import", extra={"model": "tests.hostile_import:f"}),
    Case("no-such-module", "cannot import", extra={"model": "no_such_pkg.mod:f"}),
    Case("unknown-zoo", "resnet", extra={"model": "resnet9000"}),
    Case("string-output", "str", extra={"model": "tests.hostile:string_output"}),
    Case("evaluate-string", "string_metric", extra={"evaluate": "tests.hostile:string_metric"}),
    Case("evaluate-nan", "nan_metric", extra={"evaluate": "tests.hostile:nan_metric"}),
    Case("data-raises", "no data here", extra={"data": "tests.hostile:data_raises"}),
    Case(
        "calibration-inf",
        "batch 2",
        extra={"data": "tests.hostile:inf_calibration", "passes": ["quantize"]},
    ),
    Case(
        "calibration-shape",
        "calibration batch 0",
        extra={"data": "tests.hostile:wrong_shape_calibration", "passes": ["quantize"]},
    ),
    Case(
        "calibration-dtype",
        "calibration batch 0",
        extra={"data": "tests.hostile:wrong_dtype_calibration", "passes": ["quantize"]},
    ),
    # -- the output folder
    Case("output-dot", "contains the current folder", argv=("run", "recipe.yaml", "--output", ".")),
    Case("output-dotdot", "contains the current folder", extra={"output": ".."}),
    Case("output-root", "contains the current folder", extra={"output": "/"}),
    Case(
        "output-user-folder", "did not write", extra={"output": "mine"}, setup=_user_folder("mine")
    ),
    Case("output-symlink", "did not write", setup=_symlink_to_user_folder),
    Case("output-is-file", "not a folder", setup=_file_named_out),
    Case("output-under-file", "not a folder", extra={"output": "notes.txt/out"}),
    Case("output-proc", "cannot", extra={"output": "/proc/graphopt-hostile/out"}),
    # -- other commands
    Case(
        "bench-runs-0", "runs in [1, 100000]", argv=("bench", "tests.hostile:tiny", "--runs", "0")
    ),
    Case(
        "bench-warmup-negative",
        "warmup",
        argv=("bench", "tests.hostile:tiny", "--warmup", "-5"),
    ),
    Case("bench-runs-text", "invalid int", argv=("bench", "tests.hostile:tiny", "--runs", "x")),
    Case("inspect-top-negative", "--top", argv=("inspect", "tests.hostile:tiny", "--top", "-1")),
    Case("inspect-bad-shape", "input shape", argv=("inspect", "resnet18", "--input-shape", "1,x")),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` → a hash of its content (or a marker for folders and links)."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _write_recipe(project: Path, case: Case) -> None:
    if case.recipe is None and not case.extra and case.argv[0] != "run":
        return
    content = case.recipe if case.recipe is not None else json.dumps({**BASE_RECIPE, **case.extra})
    path = project / case.recipe_name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))


def _run(
    project: Path, argv: tuple[str, ...], marker: Path | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if marker is not None:
        env["GRAPHOPT_TEST_MARKER"] = str(marker)
    env.pop("GRAPHOPT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "graphopt.cli", *argv],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder: their notes beside it and inside it, the recipe to be written there."""
    (tmp_path / "neighbour.txt").write_text("a file beside the project")
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("the user's own notes")
    return project


# These also run as real subprocesses (the console entry point, a fresh interpreter): one of
# each kind, and the ones where a process boundary matters (sys.exit, a failing import).
# Every case runs in-process too (the same ``main``), which costs a fraction of a second
# instead of the ~3 s of importing torch in a new interpreter.
SUBPROCESS = {
    "random-bytes",
    "duplicate-key",
    "shape-huge",
    "factory-sysexit",
    "import-raises",
    "calibration-inf",
    "output-dot",
    "output-symlink",
    "bench-runs-0",
}


def _check(case: Case, project: Path, returncode: int, stderr: str) -> None:
    # Progress lines of a step that outlasted a second may precede the error (a CI log
    # shows them); everything else on stderr must be the one error line.
    lines = [x for x in stderr.strip().splitlines() if not x.startswith("[graphopt ")]
    assert returncode == 2, stderr
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert case.expect in lines[0], lines[0]


def _prepare(project: Path, case: Case) -> dict[str, str]:
    if case.setup:
        case.setup(project)
    if case.argv[0] == "run" and case.recipe_name in case.argv:
        _write_recipe(project, case)
    return _snapshot(project.parent)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_nothing_changes(
    project: Path, case: Case, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graphopt.cli import main

    before = _prepare(project, case)
    monkeypatch.chdir(project)
    monkeypatch.delenv("GRAPHOPT_DEBUG", raising=False)
    try:
        code = main(list(case.argv))
    except SystemExit as exc:  # argparse's own exit, as the console script would
        code = int(exc.code or 0)
    _check(case, project, code, capsys.readouterr().err)
    assert _snapshot(project.parent) == before


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.id in SUBPROCESS],
    ids=[c.id for c in CASES if c.id in SUBPROCESS],
)
def test_hostile_input_in_a_fresh_process(project: Path, case: Case) -> None:
    before = _prepare(project, case)
    proc = _run(project, case.argv)
    _check(case, project, proc.returncode, proc.stderr)
    assert _snapshot(project.parent) == before


def test_output_path_is_refused_before_the_model_loads(project: Path) -> None:
    """A bad output fails in the first second: the slow factory never runs."""
    _file_named_out(project)
    (project / "recipe.yaml").write_text(
        json.dumps({**BASE_RECIPE, "model": "tests.hostile:sleeps"})
    )
    marker = Path(tempfile.mkdtemp()) / "factory-called"
    proc = _run(project, ("run", "recipe.yaml"), marker=marker)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    assert not marker.exists()  # the factory (which writes the marker) was never called


def test_sigterm_removes_the_staging_folder(project: Path) -> None:
    (project / "recipe.yaml").write_text(
        json.dumps({**BASE_RECIPE, "model": "tests.hostile:sleeps", "output": "new/deeper/out"})
    )
    before = _snapshot(project.parent)
    marker = Path(tempfile.mkdtemp()) / "factory-called"
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRAPHOPT_TEST_MARKER": str(marker)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "graphopt.cli", "run", "recipe.yaml"],
        cwd=project,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(600):  # the run is inside the factory: its staging folder exists
            if marker.exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert marker.exists() and proc.poll() is None, "the run never reached the factory"
        assert list((project / "new" / "deeper").glob(".out.*")), "no staging folder"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "terminated" in err
    assert _snapshot(project.parent) == before  # staging and the parents it made are gone


def test_a_graphopt_output_is_replaced_and_a_user_file_in_it_is_not(project: Path) -> None:
    (project / "recipe.yaml").write_text(json.dumps(BASE_RECIPE))
    assert _run(project, ("run", "recipe.yaml")).returncode == 0
    first = (project / "out" / "report.json").read_text()
    assert _run(project, ("run", "recipe.yaml")).returncode == 0  # graphopt's own: replaced
    assert (project / "out" / "report.json").read_text() != "" and first
    (project / "out" / "my-analysis.txt").write_text("mine")
    proc = _run(project, ("run", "recipe.yaml"))
    assert proc.returncode == 2 and "my-analysis.txt" in proc.stderr
    assert (project / "out" / "my-analysis.txt").read_text() == "mine"


def test_a_symlink_to_a_graphopt_output_is_followed_and_kept(project: Path) -> None:
    (project / "recipe.yaml").write_text(json.dumps({**BASE_RECIPE, "output": "real"}))
    assert _run(project, ("run", "recipe.yaml")).returncode == 0
    (project / "link").symlink_to(project / "real")
    assert _run(project, ("run", "recipe.yaml", "--output", "link")).returncode == 0
    assert (project / "link").is_symlink() and (project / "link" / "report.json").is_file()
    assert sorted(p.name for p in project.iterdir()) == ["link", "notes.txt", "real", "recipe.yaml"]
