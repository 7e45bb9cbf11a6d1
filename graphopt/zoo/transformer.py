"""A small BERT-like encoder classifier in plain torch.

Why a hand-written encoder beside the HF models: its attention uses separate ``q_proj`` /
``k_proj`` / ``v_proj`` linears, an explicit reshape to heads and
``F.scaled_dot_product_attention``, so the captured graph holds exactly the ATen pattern
(``aten.linear`` ×3 → ``view``/``transpose`` → ``aten.scaled_dot_product_attention``) that
attention-head pruning and linear quantisation must recognise, without HF's mask plumbing.
Layers are post-LayerNorm, as in BERT: ``x = norm(x + sublayer(x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from graphopt.errors import GraphoptError

__all__ = ["EncoderClassifier", "EncoderLayer", "MultiHeadSelfAttention", "transformer"]


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with separate q/k/v projections, split into ``num_heads`` heads."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise GraphoptError(
                f"d_model={d_model} must be divisible by num_heads={num_heads}; "
                "choose a d_model that is a multiple of num_heads"
            )
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, seq, _ = x.shape
        return x.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        batch, seq, d_model = x.shape
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        attn = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(attn.transpose(1, 2).reshape(batch, seq, d_model))


class EncoderLayer(nn.Module):
    """Post-LN encoder layer: attention + residual + LayerNorm, FFN + residual + LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(d_model, num_heads, dropout)
        self.attn_dropout = nn.Dropout(dropout)
        self.attn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, d_model), nn.Dropout(dropout)
        )
        self.ffn_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.attn_norm(x + self.attn_dropout(self.attn(x)))
        return self.ffn_norm(x + self.ffn(x))


class EncoderClassifier(nn.Module):
    """Token + learned position embeddings, N encoder layers, a BERT-style pooled classifier.

    Input: int64 token ids of shape ``(batch, seq)`` with ``seq <= max_len``.
    Output: logits of shape ``(batch, num_classes)``.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 1000,
        d_model: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        ffn_dim: int = 512,
        max_len: int = 128,
        num_classes: int = 10,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_len = max_len
        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model)
        self.embedding_norm = nn.LayerNorm(d_model)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.pooler = nn.Linear(d_model, d_model)
        self.classifier = nn.Linear(d_model, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, 0.02)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: Tensor) -> Tensor:
        seq = input_ids.shape[1]
        if seq > self.max_len:
            raise GraphoptError(
                f"sequence length {seq} exceeds max_len={self.max_len}; build the model "
                "with a larger max_len or truncate the input"
            )
        positions = torch.arange(seq, device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(positions)
        x = self.embedding_dropout(self.embedding_norm(x))
        for layer in self.layers:
            x = layer(x)
        pooled = torch.tanh(self.pooler(x[:, 0]))
        return self.classifier(pooled)


def transformer(
    *,
    num_classes: int = 10,
    vocab_size: int = 1000,
    d_model: int = 128,
    num_heads: int = 4,
    num_layers: int = 2,
    ffn_dim: int = 512,
    max_len: int = 128,
    dropout: float = 0.1,
) -> EncoderClassifier:
    """The default small encoder: vocab 1000, d_model 128, 4 heads, 2 layers, FFN 512."""
    return EncoderClassifier(
        vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        num_layers=num_layers,
        ffn_dim=ffn_dim,
        max_len=max_len,
        num_classes=num_classes,
        dropout=dropout,
    )
