"""Writing one benchmark's section of RESULTS.md, shared by the benchmark scripts."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
    """``Type: first line of the message`` (240 characters at most): how a table cell names an
    error."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:240]}" if text else type(exc).__name__


class ToolRuns:
    """One model's tools under comparison: each tool's session and its table row, in the order
    added. A tool that fails is a row with its error and no session (a result, not a crash),
    so the others are still timed against each other."""

    def __init__(self, model: str, *, model_column: bool = True) -> None:
        self.model = model
        self.model_column = model_column
        self.sessions: dict[str, Any] = {}
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, tool: str, make: Callable[[], tuple[Any, dict[str, Any]]]) -> dict[str, Any]:
        """Build ``tool`` with ``make() -> (session, facts)``; return its row."""
        say(f"{self.model}: {tool}")
        row: dict[str, Any] = {"model": self.model} if self.model_column else {}
        row["tool"] = tool
        try:
            session, facts = make()
        except Exception as exc:  # a tool that fails is a result, not a crash
            row["error"] = one_line(exc)
            say(f"{self.model}: {tool} failed: {row['error']}")
        else:
            self.sessions[tool] = session
            row.update(facts)
        self.rows[tool] = row
        return row


def load_average() -> str:
    """The 1, 5 and 15 minute load averages as ``"a, b, c"`` (empty where unknown)."""
    import os

    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    return ", ".join(f"{x:.2f}" for x in load)


def cpu_text() -> str:
    """The CPU's model name and its int8-relevant features: VNNI (or not) decides ONNX
    Runtime's int8 kernels, so the int8 speed-ups, and ``weight_range: auto``."""
    import platform

    from graphopt.quant.weight_range import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    wanted = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")
    found = [f for f in wanted if f in flags]
    if found and not {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        found.append("no VNNI")
    return f"{name} ({', '.join(found) or 'CPU flags unknown'})"


def versions_text() -> str:
    """graphopt's and its libraries' versions, Python left out (the machine line has it)."""
    from graphopt.provenance import versions

    return ", ".join(f"{k} {v}" for k, v in versions().items() if v and k != "python")
