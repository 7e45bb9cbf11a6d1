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
