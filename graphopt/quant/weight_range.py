"""Which int8 weight range this CPU's ONNX Runtime kernels compute exactly: ``weight_range``.

ONNX Runtime multiplies uint8 activations by int8 weights (QLinearConv, QGemm,
MatMulIntegerToFloat, DynamicQuantizeMatMul). On x86 its kernels take one of two paths:

- with VNNI (``vpdpbusd``; the ``avx512_vnni`` or ``avx_vnni`` CPU flag, or AMX) each u8 × s8
  product is accumulated in int32: exact for any int8 weight;
- without it (AVX2, AVX-512 without VNNI) ``vpmaddubsw`` first adds *pairs* of u8 × s8
  products into an int16 that saturates: 2 · 255 · 127 = 64 770 > 32 767. Any weight row with
  two neighbouring large values against large activations then comes out wrong.

Weights kept within [−64, 64] (ORT's ``reduce_range``: 7 bits) bound a pair by
2 · 255 · 64 = 32 640, inside int16, so the kernels are exact again, at the price of one bit of
weight precision. Measured on an AMD EPYC with AVX2 and no VNNI: a tiny BERT (prune + low rank
+ static int8) ran on ORT 1.5 % of its output range away from the int8 graph in torch with
full-range weights, and within 1e-3 with reduced ones (``tests/test_dynamic_shapes.py``);
ORT's own quantizer leaves ``reduce_range`` off by default, so its users on such CPUs get the
saturated result.

``auto`` (the ``quantize`` pass's default) picks ``reduced`` where this machine's CPU would
saturate and ``full`` elsewhere: the machine that compiles is taken to be the one that runs,
as the ORT backend's measurements assume. Deploying to other CPUs, say which: ``full`` for
VNNI (and ARM, whose dot products accumulate in int32), ``reduced`` for AVX2.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Literal

__all__ = ["FULL_QMAX", "REDUCED_QMAX", "WEIGHT_RANGES", "cpu_flags", "resolve_weight_range"]

WEIGHT_RANGES = ("auto", "full", "reduced")
FULL_QMAX = 127
REDUCED_QMAX = 64
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def resolve_weight_range(
    option: str, flags: frozenset[str] | None = None, machine: str | None = None
) -> tuple[Literal["full", "reduced"], int, str]:
    """``(range, qmax, why)`` for the ``weight_range`` option (``flags``/``machine``: this
    CPU's unless given, for tests)."""
    if option not in WEIGHT_RANGES:
        raise ValueError(f"weight_range must be one of {', '.join(WEIGHT_RANGES)}, got {option!r}")
    if option == "full":
        return "full", FULL_QMAX, "asked for"
    if option == "reduced":
        return "reduced", REDUCED_QMAX, "asked for"
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86:
        return "full", FULL_QMAX, f"auto: {machine or 'unknown'} CPU, int32 dot products"
    flags = cpu_flags() if flags is None else flags
    if flags & _VNNI_FLAGS:
        return "full", FULL_QMAX, f"auto: x86 with {', '.join(sorted(flags & _VNNI_FLAGS))}"
    if not flags:
        return "reduced", REDUCED_QMAX, "auto: x86 CPU whose flags are unknown, VNNI not assumed"
    return "reduced", REDUCED_QMAX, "auto: x86 without VNNI, whose u8×s8 pairs saturate int16"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); empty where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
