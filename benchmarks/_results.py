"""Writing one benchmark's section of RESULTS.md, shared by the benchmark scripts."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(section: str, heading: str, path: Path) -> None:
    """Replace the section starting with ``heading`` in ``path`` (or append it); keep the rest."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def say(message: str) -> None:
    """A timestamped progress line on stderr (stdout carries the table)."""
    import sys
    import time

    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a table cell names an error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as ``"a, b, c"`` (empty where unknown)."""
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return ", ".join(f"{x:.2f}" for x in load)


def versions_text() -> str:
    """graphopt's and its libraries' versions, Python left out (the machine line has it)."""
    from graphopt.provenance import versions

    return ", ".join(f"{k} {v}" for k, v in versions().items() if v and k != "python")
