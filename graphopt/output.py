"""The output folder of a run: checked before any work, written aside, moved into place at the end.

Why so careful: an output path is a user's folder, and ``--output .`` or a recipe's ``output: ..``
once deleted the user's files (the recipe included). The rules:

- the target is checked in the first second, before the model is even loaded: an existing file,
  a path through a file, an unwritable or virtual place (``/proc/…``) is one line, exit 2;
- a folder that contains the current directory (``.``, ``..``, ``/``) is never a target;
- an existing folder is replaced only when it is empty or when graphopt wrote it: it holds
  graphopt's manifest (:data:`MANIFEST`) and nothing that the manifest does not list;
- a symbolic link is followed: the rules apply to the real folder, and the link keeps pointing
  at the new output;
- the run writes into a fresh temporary folder beside the target; the old output is moved aside,
  the new one renamed into place, the old one deleted; on failure, Ctrl-C or SIGTERM the
  temporary folder and every parent folder the run created are removed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from graphopt.errors import RecipeError

__all__ = ["MANIFEST", "OutputFolder", "Terminated", "sigterm_raises"]

MANIFEST = ".graphopt-output.json"


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C so that ``finally`` blocks clean up."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration (main thread only)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class OutputFolder:
    """A run's output: ``with OutputFolder(path) as folder: write into folder``.

    Constructing it checks the target and creates the temporary folder, so a bad output path
    fails before any work; leaving the block without an error moves the folder into place.
    """

    def __init__(self, target: str | Path) -> None:
        if not isinstance(target, (str, Path)) or not str(target).strip():
            raise RecipeError(f"the output must be a folder path, got {target!r}")
        self.requested = Path(target)
        self.status = "complete"  # recorded in the manifest; a run whose budgets failed says so
        self.target = Path(os.path.abspath(target)).resolve()
        self._check_target()
        self._created_parents = self._make_parents()
        try:
            self.staging = Path(
                tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent)
            )
        except OSError as exc:
            self._remove_created_parents()
            raise RecipeError(
                f"cannot write the output folder {str(self.requested)!r}: {exc.strerror}"
            ) from exc

    def __enter__(self) -> Path:
        return self.staging

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            self._discard()

    # ---- checks ---------------------------------------------------------------------------
    def _check_target(self) -> None:
        target, shown = self.target, str(self.requested)
        here = Path.cwd().resolve()
        if target == here or target in here.parents:
            raise RecipeError(
                f"the output folder {shown!r} contains the current folder; "
                "give a new folder such as out/run1"
            )
        if target.exists() or target.is_symlink():
            if not target.is_dir():
                raise RecipeError(f"the output {shown!r} exists and is not a folder")
            foreign = self._foreign_entries(target)
            if foreign:
                raise RecipeError(
                    f"the output folder {shown!r} holds files graphopt did not write "
                    f"(e.g. {foreign[0]!r}); give a new folder or empty that one"
                )
        ancestor = target.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise RecipeError(f"the output {shown!r} lies under {str(ancestor)!r}, not a folder")
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise RecipeError(f"cannot write the output {shown!r}: {str(ancestor)!r} is read-only")

    @staticmethod
    def _foreign_entries(folder: Path) -> list[str]:
        """Entries of an existing folder that graphopt's manifest does not account for."""
        try:
            entries = sorted(os.listdir(folder))
        except OSError as exc:
            raise RecipeError(
                f"cannot read the output folder {str(folder)!r}: {exc.strerror}"
            ) from exc
        if not entries:
            return []
        try:
            listed = set(json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"])
        except (OSError, ValueError, KeyError, TypeError):
            return entries
        return [e for e in entries if e != MANIFEST and e not in listed]

    def _make_parents(self) -> list[Path]:
        missing = [p for p in reversed(self.target.parents) if not p.exists()]
        made = []
        try:
            for folder in missing:
                folder.mkdir()
                made.append(folder)
        except OSError as exc:
            for folder in reversed(made):
                folder.rmdir()
            raise RecipeError(
                f"cannot create the output folder {str(self.requested)!r}: {exc.strerror}"
            ) from exc
        return made

    # ---- commit / discard -----------------------------------------------------------------
    def _commit(self) -> None:
        from graphopt.provenance import sha256_file

        files = {
            name: sha256_file(self.staging / name) for name in sorted(os.listdir(self.staging))
        }
        manifest = {"written_by": "graphopt", "status": self.status, "files": files}
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        self.staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
        old = None
        if self.target.exists():
            self._check_target()  # still ours: nothing was added while the run worked
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old.", dir=self.target.parent))
            os.replace(self.target, old / "previous")
        os.replace(self.staging, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._created_parents = []  # they hold the output now

    def _discard(self) -> None:
        if self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created_parents()

    def _remove_created_parents(self) -> None:
        for folder in reversed(self._created_parents):
            try:
                folder.rmdir()
            except OSError:
                break
        self._created_parents = []
