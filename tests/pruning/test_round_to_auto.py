"""``prune: {round_to: auto}``: the channel multiple measured on the backend.

The choice is tested on synthetic backends whose slow path off a block is known (a block of
8, of 16, none, with timing noise and an outlier); the pass is tested for using the measured
multiple; ONNX Runtime's measurement only for returning a candidate (never for how fast).
"""

from __future__ import annotations

import random

import pytest
import torch

from graphopt.capture import trace
from graphopt.errors import PassError
from graphopt.passes import PassContext, get_pass
from graphopt.pruning.multiples import CANDIDATES, PROBE_COUNTS, fast_multiple, probe_specs
from graphopt.zoo import get_model

aten = torch.ops.aten


def blocked(block: int, *, slow: float = 1.4, noise: float = 0.0, seed: int = 0):
    """A backend whose conv costs ``slow`` × more per MAC off multiples of ``block``."""
    rng = random.Random(seed)

    def measure(specs):
        out = []
        for spec in specs:
            c = spec.out_channels
            factor = slow if block > 1 and c % block else 1.0
            out.append(1e-9 * c * c * factor * (1 + rng.uniform(-noise, noise)))
        return out

    return measure


@pytest.mark.parametrize("block", [4, 8, 16, 32])
def test_the_block_a_backend_runs_fast_is_found(block: int) -> None:
    assert fast_multiple(blocked(block)).multiple == block


def test_a_backend_without_blocks_gets_no_rounding() -> None:
    found = fast_multiple(blocked(1))
    assert found.multiple == 1 and max(found.gains.values()) < 1.1


def test_noise_and_one_wrong_timing_do_not_move_the_choice() -> None:
    noisy = blocked(16, noise=0.08, seed=3)

    def with_outlier(specs):
        seconds = noisy(specs)
        seconds[PROBE_COUNTS.index(48)] *= 5  # one timing hit by a load burst
        return seconds

    assert fast_multiple(with_outlier).multiple == 16


def test_the_probe_is_one_conv_at_every_count() -> None:
    specs = probe_specs()
    assert [s.out_channels for s in specs] == list(PROBE_COUNTS)
    assert all(s.in_channels == s.out_channels and s.kernel == (3, 3) for s in specs)
    for b in CANDIDATES:  # each candidate has multiples and half-block counts to compare
        assert sum(c % b == 0 for c in PROBE_COUNTS) >= 3
        assert sum(c % (b // 2) == 0 and c % b != 0 for c in PROBE_COUNTS) >= 3


def _prune(round_to, layer_latency=None):
    model, inputs = get_model("resnet18", input_shape=(1, 3, 32, 32))
    gm = trace(model, inputs)
    prune = get_pass("prune", target_macs=0.5, round_to=round_to)
    return prune.run(gm, PassContext(inputs, layer_latency=layer_latency))


def _conv_widths(gm) -> list[int]:
    return [
        int(n.meta["val"].shape[1])
        for n in gm.graph.nodes
        if n.op == "call_function" and n.target is aten.conv2d.default
    ]


def test_the_pass_rounds_to_the_measured_multiple() -> None:
    result = _prune("auto", blocked(8))
    assert result.stats["round_to"]["multiple"] == 8 and result.stats["round_to"]["auto"]
    assert result.modified
    assert all(w % 8 == 0 for w in _conv_widths(result.graph_module))
    fixed = _prune(8)
    assert fixed.stats["round_to"] == 8
    assert fixed.stats["plan"] == result.stats["plan"]  # the same as asking for 8


def test_auto_without_a_backend_names_what_is_missing() -> None:
    with pytest.raises(PassError, match=r"layer_latency.*round_to: auto"):
        _prune("auto")


def test_auto_is_the_only_word_round_to_takes() -> None:
    with pytest.raises(Exception, match="round_to"):
        get_pass("prune", target_macs=0.5, round_to="fast")


def test_onnx_runtime_measures_a_candidate_multiple(tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnxruntime")
    from graphopt.backends.layer_latency import OrtLayerLatency

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measure = OrtLayerLatency(intra_op_threads=1, warmup=1, runs=3)
    found = fast_multiple(measure)
    assert found.multiple in (1, *CANDIDATES)
    assert set(found.gains) == set(CANDIDATES)
    assert measure.measured == len(PROBE_COUNTS)
    again = OrtLayerLatency(intra_op_threads=1, warmup=1, runs=3)
    fast_multiple(again)
    assert again.measured == 0  # the probe's timings come from the cache
