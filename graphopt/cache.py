"""Where graphopt keeps what it computes once and reuses: trained task models, tuning records.

One convention for every cache (XDG base directories): ``$XDG_CACHE_HOME/graphopt/…``, or
``~/.cache/graphopt/…`` when the variable is unset or empty. Tests point ``XDG_CACHE_HOME`` at
a temporary folder, so they never read or write the user's cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "cache_root"]


def cache_root(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/graphopt/<parts…>`` (not created: writers create what they need)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "graphopt", *parts)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Why: two processes filling the same cache entry, or one killed mid-write, must never leave
    a truncated file that a later run would load. The temporary name is unique (``mkstemp``
    in the same folder, so the rename stays on one file system), so concurrent writers never
    share one; the data is flushed to disk before the rename, so a crash can't publish an
    empty file under the final name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
