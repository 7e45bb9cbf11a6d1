"""Test-wide settings.

One intra-op thread: tests check correctness, never speed, and on a shared 2-core machine
torch's default thread pool oversubscribes the cores (seen here: 50× slower eager ResNet-50).
``make test`` uses the cores instead by running one pytest-xdist worker per core, each at one
thread; tests therefore never share a path they write (``tmp_path``, or atomic cache writes).

Hypothesis draws new random architectures on every local run (that is how the random-model
tests find bugs); under CI (``CI`` set) it is derandomized, so a landing run is reproducible
and a red CI is never a coin flip.
"""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _every_written_report_matches_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every report.json the suite writes is validated against the shipped JSON Schema."""
    import json

    import jsonschema

    from graphopt.report import CompressionReport, report_schema

    schema = report_schema()
    write = CompressionReport.write

    def checked_write(self: CompressionReport, folder: Path) -> list[Path]:
        written = write(self, folder)
        document = json.loads((folder / "report.json").read_text())
        jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())
        WRITTEN_REPORTS.append(folder / "report.json")
        return written

    monkeypatch.setattr(CompressionReport, "write", checked_write)


WRITTEN_REPORTS: list[Path] = []
