import torch
import torch.nn.functional as F
from torch import nn

from graphopt.analysis import analyze
from graphopt.capture import trace


def test_conv_linear_macs_and_params() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=4, stride=2),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 10),
    ).eval()
    stats = analyze(trace(model, torch.randn(2, 3, 8, 8)))
    conv1 = 8 * 8 * 8 * 3 * 9
    conv2 = 8 * 3 * 3 * 2 * 9
    fc = 72 * 10
    assert stats.macs == conv1 + conv2 + fc
    assert stats.params == sum(p.numel() for p in model.parameters())
    assert stats.size_by_dtype == {"float32": stats.params * 4}


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(16, 48)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return torch.matmul(y, y.transpose(-1, -2))


def test_attention_and_matmul_macs_are_per_sample() -> None:
    stats = analyze(trace(Attention().eval(), torch.randn(4, 5, 16)))
    linear = 5 * 16 * 48
    sdpa = 2 * 5 * 5 * (8 + 8)
    matmul = 2 * 5 * 5 * 8
    assert stats.macs == linear + sdpa + matmul


def test_size_counts_bytes_by_dtype() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).eval()
    stats = analyze(trace(model, torch.randn(2, 4)))
    assert stats.size_by_dtype["int64"] == 8  # num_batches_tracked
    assert stats.size_bytes == (28 + 8) * 4 + 8  # params + running stats, float32


def test_peak_memory_frees_dead_tensors() -> None:
    chain = nn.Sequential(*[nn.Linear(64, 64) for _ in range(6)]).eval()
    stats = analyze(trace(chain, torch.randn(2, 64)))
    assert stats.peak_activation_bytes == 2 * 64 * 4  # only producer and consumer alive at once
    per_node = [n for n in stats.nodes if n.op.startswith("linear")]
    assert len(per_node) == 6 and all(n.macs == 64 * 64 for n in per_node)
    assert all(n.output_shape == (1, 64) for n in per_node)
