"""Block-wise weight quantization of a linear weight ``W`` (``[N, K]``, out × in) and its packing.

Blocks run along the input dimension K, as ONNX Runtime's ``MatMulNBits`` reads them: row n's
columns ``[j·B, (j+1)·B)`` share one scale ``s`` and one zero point ``z``, and a code ``q`` in
``[0, 2^bits − 1]`` stands for ``(q − z)·s``. K is padded to a multiple of B with zeros, which
every scheme below codes exactly (0 is always representable), so the padding dequantizes to 0.

The parameters follow ONNX Runtime's own quantizer (MLAS ``MlasQuantizeBlockwise``), so a
graphopt int4 model and one quantized by ORT's ``MatMulNBitsQuantizer`` differ only in method,
never in convention (``tests/quant/test_int4.py`` checks codes and packing against ORT's
``quantize_matmul_4bits``):

- **asymmetric**: the range is widened to hold 0, ``lo = min(min W_b, 0)``,
  ``hi = max(max W_b, 0)``; ``s = (hi − lo)/(2^bits − 1)``, ``z = round(−lo/s)``;
- **symmetric**: ``z = 2^(bits−1)`` is fixed (not stored: MatMulNBits assumes it when the
  zero-point input is absent) and ``s = m / −2^(bits−1)`` where m is the block's value of
  largest magnitude, *with its sign*: m lands exactly on code 0 and all 16 levels are used
  (``s`` may be negative; ``(q − z)·s`` does not care). ``|m|/7`` would waste level 0.

``q = clamp(round(w/s) + z, 0, 2^bits − 1)`` (round half to even; ORT rounds half away from
zero, which differs only on exact ties). A block of zeros gets ``s = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BlockQuant",
    "block_params",
    "dequantize",
    "pack_codes",
    "quantize_rtn",
    "quantize_with",
    "to_blocks",
]


@dataclass(frozen=True)
class BlockQuant:
    """A quantized ``[N, K]`` weight: uint8 codes ``[N, n_blocks, B]`` (one per byte, K padded),
    float32 scales ``[N, n_blocks, 1]``, uint8 zero points of the same shape (None when
    symmetric: the fixed ``2^(bits−1)``), the bit width and the unpadded K."""

    codes: Tensor
    scales: Tensor
    zeros: Tensor | None
    bits: int
    in_features: int

    @property
    def block_size(self) -> int:
        return int(self.codes.shape[2])

    @property
    def symmetric(self) -> bool:
        return self.zeros is None

    @property
    def zero_point(self) -> Tensor | float:
        """What the codes are offset by: the stored zero points, or the symmetric midpoint."""
        return self.zeros.float() if self.zeros is not None else float(2 ** (self.bits - 1))


def to_blocks(weight: Tensor, block_size: int) -> Tensor:
    """``[N, K]`` → ``[N, n_blocks, B]`` float32, K padded with zeros to a multiple of B."""
    n, k = weight.shape
    pad = (-k) % block_size
    w = torch.nn.functional.pad(weight.detach().float(), (0, pad))
    return w.reshape(n, (k + pad) // block_size, block_size)


def block_params(blocks: Tensor, bits: int, symmetric: bool) -> tuple[Tensor, Tensor | None]:
    """Scales ``[..., 1]`` (float32) and zero points (uint8, None when symmetric) of each block
    (the last dimension), by the rules in the module docstring."""
    qmax = 2**bits - 1
    if symmetric:
        index = blocks.abs().argmax(dim=-1, keepdim=True)
        extreme = blocks.gather(-1, index)
        scales = extreme / -float(2 ** (bits - 1))
        return torch.where(scales == 0, torch.ones_like(scales), scales), None
    lo = blocks.amin(dim=-1, keepdim=True).clamp(max=0)
    hi = blocks.amax(dim=-1, keepdim=True).clamp(min=0)
    scales = (hi - lo) / qmax
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    zeros = torch.round(-lo / scales).clamp(0, qmax).to(torch.uint8)
    return scales, zeros


def quantize_with(blocks: Tensor, scales: Tensor, zeros: Tensor | None, bits: int) -> Tensor:
    """uint8 codes of ``blocks`` under given scales and zero points (see the module docstring)."""
    zero = zeros.float() if zeros is not None else float(2 ** (bits - 1))
    return torch.clamp(torch.round(blocks / scales) + zero, 0, 2**bits - 1).to(torch.uint8)


def quantize_rtn(weight: Tensor, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    """Round to nearest, block by block: the calibration-free baseline."""
    blocks = to_blocks(weight, block_size)
    scales, zeros = block_params(blocks, bits, symmetric)
    codes = quantize_with(blocks, scales, zeros, bits)
    return BlockQuant(codes, scales.float(), zeros, bits, int(weight.shape[1]))


def dequantize(quant: BlockQuant) -> Tensor:
    """The float32 ``[N, K]`` weight the codes stand for: ``(q − z)·s`` per block."""
    n = quant.codes.shape[0]
    full = ((quant.codes.float() - quant.zero_point) * quant.scales).reshape(n, -1)
    return full[:, : quant.in_features]


def pack_codes(quant: BlockQuant) -> tuple[Tensor, Tensor, Tensor | None]:
    """MatMulNBits' inputs B, scales and zero_points as uint8/float32 tensors.

    B is ``[N, n_blocks, B·bits/8]``: for 4 bits, code 2i in the low nibble and 2i+1 in the
    high nibble of byte i; scales flat ``[N·n_blocks]``; zero points ``[N, ⌈n_blocks·bits/8⌉]``
    packed the same way along a row (a trailing odd nibble holds 8, as ORT writes it), None when
    symmetric.
    """
    codes = quant.codes
    n, blocks, _ = codes.shape
    packed = _pack(codes, quant.bits)
    scales = quant.scales.reshape(n * blocks).float().contiguous()
    zeros = None
    if quant.zeros is not None:
        zeros = _pack(quant.zeros.reshape(n, blocks), quant.bits, pad=2 ** (quant.bits - 1))
    return packed, scales, zeros


def _pack(values: Tensor, bits: int, pad: int = 0) -> Tensor:
    """Pack uint8 codes along the last dimension, ``8/bits`` per byte, low bits first."""
    if bits == 8:
        return values.to(torch.uint8).contiguous()
    if values.shape[-1] % 2:
        values = torch.nn.functional.pad(values, (0, 1), value=pad)
    low, high = values[..., 0::2], values[..., 1::2]
    return (low | (high << 4)).to(torch.uint8).contiguous()
