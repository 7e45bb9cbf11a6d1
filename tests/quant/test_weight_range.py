"""``weight_range``: full [−127, 127] or reduced [−64, 64] int8 weights, and ``auto`` choosing
by the CPU (x86 without VNNI saturates int16 pairs of u8 × s8 products in ORT's kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from graphopt.backends import get_backend
from graphopt.capture import trace
from graphopt.ir import get_tensor
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Quantize
from graphopt.quant.rewrite import QuantOps
from graphopt.quant.weight_range import REDUCED_QMAX, cpu_flags, resolve_weight_range


@pytest.mark.parametrize(
    ("flags", "machine", "expected"),
    [
        ({"avx2", "avx512f", "avx512_vnni"}, "x86_64", "full"),
        ({"avx2", "avx_vnni"}, "x86_64", "full"),
        ({"avx2", "fma"}, "x86_64", "reduced"),  # the AVX2-only EPYC of this project's CI
        ({"avx2", "avx512f", "avx512bw"}, "x86_64", "reduced"),  # AVX-512 without VNNI
        (set(), "x86_64", "reduced"),  # flags unknown: VNNI not assumed
        (set(), "aarch64", "full"),  # int32 dot products
    ],
)
def test_auto_picks_the_range_by_the_cpu(flags, machine, expected) -> None:
    weights, qmax, why = resolve_weight_range("auto", frozenset(flags), machine)
    assert weights == expected and qmax == (127 if expected == "full" else 64)
    assert why.startswith("auto")


def test_explicit_ranges_and_a_bad_one() -> None:
    assert resolve_weight_range("full", frozenset(), "x86_64")[:2] == ("full", 127)
    assert resolve_weight_range("reduced", frozenset({"avx512_vnni"}), "x86_64")[:2] == (
        "reduced",
        64,
    )
    with pytest.raises(ValueError, match="weight_range must be one of"):
        resolve_weight_range("7bit")


class _Wide(nn.Module):
    """Weights at ± their largest value everywhere and inputs far from zero: the worst case
    for int16 pairs (two neighbouring products of 255 · 127 each)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        with torch.no_grad():
            sign = torch.sign(torch.randn(32, 64, generator=torch.Generator().manual_seed(0)))
            self.fc.weight.copy_(sign * 0.5)
            self.conv.weight.fill_(0.25)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc(x), self.conv(image)


def _int8(weight_range: str, scheme: str = "int8"):
    model = _Wide().eval()
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.rand(2, 64, generator=gen) * 4, torch.rand(2, 8, 6, 6, generator=gen) * 4)
    ctx = PassContext(inputs, {"calibration": [inputs]})
    quantize = Quantize(scheme=scheme, weight_range=weight_range, progress=False)
    result = PassManager([quantize]).run(trace(model, inputs), inputs, context=ctx)
    return result, inputs


@pytest.mark.parametrize("scheme", ["int8", "dynamic"])
def test_reduced_weights_stay_within_64_and_say_so(scheme) -> None:
    for weight_range, bound in (("reduced", REDUCED_QMAX), ("full", 127)):
        result, _ = _int8(weight_range, scheme)
        gm = result.graph_module
        dequants = [n for n in gm.graph.nodes if n.target is QuantOps.dq_channel]
        assert dequants
        for node in dequants:
            q = get_tensor(gm, node.args[0])
            assert int(q.abs().max()) == bound  # the largest weight lands on the bound
            assert node.args[4:6] == (-bound, bound)
        stats = result.stages[-1].stats
        assert stats["weight_range"] == weight_range


def _ort_error(weight_range: str, tmp_path) -> list[float]:
    """Each output's largest ORT-vs-torch difference, in output quantization steps."""
    result, inputs = _int8(weight_range)
    gm = result.graph_module
    path = tmp_path / f"{weight_range}.onnx"
    compiled = get_backend("onnxruntime", intra_op_threads=1, onnx_path=path).compile(gm, inputs)
    ops = compiled.info["ort_op_counts"]
    assert ops.get("QGemm") == 1 and ops.get("QLinearConv") == 1, ops  # int8 kernels ran
    got = compiled.run([t.numpy() for t in inputs])
    with torch.no_grad():
        want = [t.numpy() for t in gm(*inputs)]
    pairs = zip(got, want, strict=True)
    return [float(np.abs(g - w).max() / (np.abs(w).max() / 255)) for g, w in pairs]


def test_reduced_weights_run_exactly_on_onnxruntime_on_any_cpu(tmp_path) -> None:
    """With [−64, 64] weights ORT's int8 kernels cannot saturate, whatever the CPU: its output
    is the torch QDQ graph's up to one rounding step of the output."""
    assert max(_ort_error("reduced", tmp_path)) <= 1.01


def test_auto_says_full_weights_saturate_exactly_where_they_do(tmp_path) -> None:
    """On this machine's CPU: where ``auto`` picks ``reduced``, full-range weights do come out
    wrong on ORT (measured on an AVX2 EPYC: 21 % of the output range, 54 steps); where it picks
    ``full``, they are exact."""
    error = max(_ort_error("full", tmp_path))
    if resolve_weight_range("auto")[0] == "reduced" and cpu_flags():
        assert error > 5
    elif resolve_weight_range("auto")[0] == "full":
        assert error <= 1.01
