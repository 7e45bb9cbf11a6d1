"""Every registered pass, run by the pass manager, leaves the original's tensors as they were.

The manager's working copy shares its tensors with the original (``graphopt.sharing``), so a
pass must set new tensors where it changes them. The manager's guard reads version counters;
this test compares bytes, so it also catches writes through ``.data`` that the counters miss.
The extra cases are the code paths that write tensors: re-fit and BatchNorm re-estimation
after pruning, sparsity masks, dense codebooks, distillation.
"""

from __future__ import annotations

import pytest
import torch

from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes import get_pass
from graphopt.sharing import graph_tensors
from tests.passes.test_contract import MINIMAL_OPTIONS, _context, _model

CASES = [(name, MINIMAL_OPTIONS[name]) for name in sorted(MINIMAL_OPTIONS)] + [
    (
        "prune",
        {"ratio": 0.25, "importance": "reconstruction", "refit": True, "recalibrate_bn": True},
    ),
    ("sparsify", {"sparsity": 0.5, "steps": 2, "recovery": {"steps": 2}}),
    ("cluster", {"bits": 4, "form": "dense"}),
    ("quantize", {"scheme": "dynamic"}),
    ("quantize_weights", {"block_size": 16, "method": "gptq"}),
]


@pytest.mark.parametrize(
    ("name", "options"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)]
)
def test_the_original_keeps_its_bytes(name: str, options: dict) -> None:
    model = _model()
    inputs = (torch.randn(2, 3, 8, 8),)
    gm = trace(model, inputs)
    before = {k: v.detach().clone() for k, v in graph_tensors(gm).items()}
    passes = [get_pass(name, **options)]
    if name == "recover" or "recovery" in options:
        passes = [get_pass("prune", ratio=0.25), *passes]  # something to recover from
    PassManager(passes).run(gm, inputs, context=_context(model, inputs))
    after = graph_tensors(gm)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert changed == [], f"{name} changed the original's {changed}"
