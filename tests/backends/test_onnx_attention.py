"""ONNX export of attention whose mask depends on the input (T5's, BEiT's, Swin's biases).

The exporter infers strides twice; unpinned, ``scaled_dot_product_attention`` took the flash
kernel's ``[B, S, H, D]`` layout the first time and the math kernel's contiguous one the
second, and the ``transpose(1, 2).reshape(…)`` after it failed with "Cannot view a tensor
with shape …" (``graphopt.backends.onnxruntime._onnx_export`` pins the math kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.backends import get_backend
from graphopt.backends.base import to_numpy_inputs
from graphopt.capture import trace
from graphopt.fidelity import relative_error


class _MaskedAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = (nn.Linear(32, 32) for _ in range(4))
        self.bias = nn.Parameter(torch.randn(1, 2, 8, 8))

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, -1, 2, 16).transpose(1, 2) for f in (self.q, self.k, self.v))
        mask = self.bias + 0.1 * x.mean(-1)[:, None, None, :]  # per sample: (B, H, S, S)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        y = y.reshape(y.shape[0], -1, s, 16).transpose(1, 2).contiguous()  # HF's sdpa tail
        return self.o(y.reshape(b, s, -1))


def test_attention_with_an_input_dependent_mask_exports_with_a_dynamic_batch() -> None:
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1))
    gm = trace(_MaskedAttention().eval(), (x,))
    compiled = get_backend("onnxruntime", intra_op_threads=1).compile(gm, (x,))
    assert compiled.info["dynamic_batch"]
    bigger = torch.randn(3, 8, 32, generator=torch.Generator().manual_seed(2))
    (got,) = compiled.run(to_numpy_inputs((bigger,)))
    with torch.no_grad():
        expected = gm(bigger)
    assert relative_error([expected], [torch.from_numpy(got)]) <= 1e-5
