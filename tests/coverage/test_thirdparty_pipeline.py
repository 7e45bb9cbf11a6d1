"""Third-party architectures through the whole pipeline: the fast entries of the registry.

Each ``fast`` entry of ``tests/coverage/architectures.py`` runs fold_batchnorm →
prune(target_macs=0.7) → low_rank(svd, 0.5) → quantize(int8) → ONNX Runtime
(``tests/coverage/pipeline.py``). It must complete, ONNX Runtime must compute what the
compressed graph computes in torch, prune and low rank must have cut something (unless the
entry says why not: ``Architecture.unmodified``), and every group pruning left whole must say
why. The other entries run in
``benchmarks/coverage.py`` (the table in ``benchmarks/RESULTS.md``); an entry whose package is
not installed is skipped.

ORT tolerance: 0.1 of the output's largest magnitude. The torch graph is the QDQ simulation
(float arithmetic on dequantized values); ORT runs integer kernels that requantize between
ops (QLinearAdd, QLinearConv with a fused ReLU), so one rounding step per op can differ and
those steps add up over a network. Measured on the registry: at most 2.6e-2 (MONAI's U-Net,
the deepest int8 chain here); a wrong graph is off by the order of the output itself.
"""

from __future__ import annotations

import pytest

from tests.coverage.architectures import ARCHITECTURES, Architecture
from tests.coverage.pipeline import run_pipeline

ORT_TOLERANCE = 0.1
FAST = [a for a in ARCHITECTURES if a.fast]


def test_the_registry_spans_the_families_and_packages_it_promises() -> None:
    names = [a.name for a in ARCHITECTURES]
    assert len(names) == len(set(names)) and len(names) >= 30
    assert {a.family for a in ARCHITECTURES} == {"vision", "text", "audio"}
    assert {a.source for a in ARCHITECTURES} >= {"transformers", "monai", "efficientnet_pytorch"}
    assert {a.family for a in FAST} == {"vision", "text", "audio"}


@pytest.mark.parametrize("arch", FAST, ids=[a.name for a in FAST])
def test_a_third_party_model_survives_the_whole_pipeline(arch: Architecture) -> None:
    if not arch.available():
        pytest.skip(f"{arch.source} is not installed (pip install {arch.source})")
    outcome = run_pipeline(arch)
    assert outcome.ok, f"{arch.name}: {outcome.status} failed: {outcome.error}"
    assert outcome.ort_max_diff is not None and outcome.ort_max_diff <= ORT_TOLERANCE
    assert "quantize" in outcome.modified
    for stage in ("prune", "low_rank"):  # each cut something, unless the entry says why not
        assert (stage in outcome.modified) == (stage not in arch.unmodified), arch.note
    if "prune" not in arch.unmodified:
        assert outcome.pruned_groups > 0
        assert outcome.macs_kept is not None and outcome.macs_kept <= 0.7 + 1e-6
    assert all(reason.strip() for _, reason in outcome.frozen)
