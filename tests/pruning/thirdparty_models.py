"""Small models for the rules the third-party coverage suite needed (``tests/coverage``).

Each reproduces, at toy size, the op pattern of one family that froze or broke: PoolFormer's
layer scale and MobileNet's in-place dropout, ViT's class token, MobileViT's and LeViT's eager
attention and LeViT's BatchNorm over flattened tokens, T5's per-head bias from an embedding,
Swin's and BEiT's bias table gathered by a position index, SegFormer's single-head attention,
Swin's shifted windows (roll).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerScale(nn.Module):
    """``x + gamma[:, None, None] * drop(conv(x))`` with an in-place dropout (PoolFormer)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.drop = nn.Dropout(0.1, inplace=True)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = x + self.gamma.unsqueeze(-1).unsqueeze(-1) * self.drop(self.conv2(x))
        return self.conv3(x).mean((2, 3))


class ClassToken(nn.Module):
    """A ViT stem: tokens, a class token expanded over the batch, position embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.pos = nn.Parameter(torch.randn(1, 5, 8))
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        t = self.embed(x)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        t = t + F.relu(self.fc(t))
        return self.head(t[:, 0])


class EagerAttention(nn.Module):
    """Attention written with matmuls (MobileViT, LeViT): ``softmax(q kᵀ · s) v`` per head."""

    def __init__(self, heads: int = 2, dim: int = 4) -> None:
        super().__init__()
        self.heads, self.dim = heads, dim
        width = heads * dim
        self.q, self.k, self.v = (nn.Linear(8, width) for _ in range(3))
        self.o = nn.Linear(width, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q, k, v = (
            f(x).view(b, s, self.heads, self.dim).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        attn = (q @ k.transpose(-2, -1) * self.dim**-0.5).softmax(-1)
        return self.o((attn @ v).transpose(1, 2).reshape(b, s, -1))


class FlatBatchNorm(nn.Module):
    """LeViT's ``bn(x.flatten(0, 1)).reshape_as(x)``: a BatchNorm1d over every token."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        return self.fc2(F.relu(self.bn(h.flatten(0, 1)).reshape_as(h)))


class BiasedAttention(nn.Module):
    """Attention with a per-head position bias as the mask, from a table read by an index.

    ``table="embedding"``: T5's ``nn.Embedding(buckets, heads)``; ``"gather"``: Swin's and
    BEiT's ``table[index.view(-1)]`` of a ``[distances, heads]`` parameter.
    """

    def __init__(self, table: str = "embedding", heads: int = 2, seq: int = 4) -> None:
        super().__init__()
        self.heads, self.seq, self.table = heads, seq, table
        self.q, self.k, self.v = (nn.Linear(8, heads * 4) for _ in range(3))
        self.o = nn.Linear(heads * 4, 8)
        if table == "embedding":
            self.rel = nn.Embedding(2 * seq - 1, heads)
        else:
            self.rel = nn.Parameter(torch.randn(2 * seq - 1, heads))
        pos = torch.arange(seq)
        self.register_buffer("index", pos[None, :] - pos[:, None] + seq - 1)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, self.heads, 4).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.table == "embedding":
            bias = self.rel(self.index)  # (seq, seq, heads)
        else:
            bias = self.rel[self.index.view(-1)].view(self.seq, self.seq, -1)
        bias = bias.permute(2, 0, 1).unsqueeze(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.5)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class OneHead(nn.Module):
    """SegFormer's first stage: one head, so the channels sit on the head dim (−1)."""

    def __init__(self, scale: float | None = 0.25) -> None:
        super().__init__()
        self.scale = scale
        self.q, self.k, self.v = (nn.Linear(8, 16) for _ in range(3))
        self.o = nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, 1, 16).transpose(1, 2) for f in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))


class Rolled(nn.Module):
    """Swin's cyclic shift: a roll along the spatial dims, or (``dims=1``) the channels."""

    def __init__(self, dims: tuple[int, ...] = (2, 3)) -> None:
        super().__init__()
        self.dims = dims
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        shifts = (1,) * len(self.dims)
        return self.conv2(torch.roll(F.relu(self.conv1(x)), shifts, self.dims))


class GroupedQueryAttention(nn.Module):
    """Llama's GQA: 4 query heads share 2 key/value heads, repeated by ``expand`` (repeat_kv)."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 16)
        self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8)
        self.o = nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 4, 4).transpose(1, 2)
        k, v = (f(x).view(b, s, 2, 4).transpose(1, 2) for f in (self.k, self.v))
        k, v = (t[:, :, None].expand(b, 2, 2, s, 4).reshape(b, 4, s, 4) for t in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=0.5)
        return self.o(y.transpose(1, 2).reshape(b, s, -1))
