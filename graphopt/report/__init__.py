"""The compression report: original vs compressed, per stage and per backend.

Metrics (names as in the model-compression literature):
- TRM, task metric: whatever the user's evaluation function returns, for both models;
- GEM, general efficiency metrics: params, MACs, model size in bytes, peak activation memory;
- DM, deployment metric: median latency per backend, measured interleaved in one run;
- compression rate a/a* and index-space saving (a − a*)/a* for every GEM (a original, a*
  compressed), and speed-up s/s* for every backend.
Written as a terminal table, ``report.json`` and ``report.md`` with ``report.png``.

``report.json`` is versioned (``schema_version``; the JSON Schema ships as
``graphopt/schemas/report.schema.json``) and carries the provenance of the run (versions,
machine, recipe and input hashes, artifact hashes, start and end time) and the budgets checked
(``status``: ``passed``, ``failed`` or ``unchecked``). ``report.md`` opens with a model card: a
short summary a reviewer can paste into a pull request.

Split along what changes together: ``model`` (the data and the JSON), ``markdown``,
``terminal`` and ``plots`` (the renderers), ``text`` (formatting they share). No renderer knows
a pass: every list of rows a pass puts in its stats is rendered as a table.
"""

from graphopt.report.model import (
    SCHEMA_VERSION,
    BackendLatency,
    CompressionReport,
    artifact_hashes,
    ratio,
    report_schema,
)

__all__ = [
    "SCHEMA_VERSION",
    "BackendLatency",
    "CompressionReport",
    "artifact_hashes",
    "ratio",
    "report_schema",
]
