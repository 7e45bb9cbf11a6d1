"""Small shared test utilities."""

from __future__ import annotations

import torch
from torch import nn

aten = torch.ops.aten


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics so a fold is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def count_op(gm: torch.fx.GraphModule, op: object) -> int:
    return sum(
        1
        for n in gm.graph.nodes
        if n.op == "call_function"
        and (n.target is op or getattr(n.target, "overloadpacket", None) is op)
    )


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


class BertEncoder(nn.Module):
    """An HF ``BertModel`` built from a config (random weights, nothing downloaded) called as
    ``(ids, mask) -> last_hidden_state``: the tiny transformer several suites prune."""

    def __init__(self, **config: int) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        self.bert = BertModel(BertConfig(**config))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def tiny_bert(layers: int = 2, seed: int = 0) -> BertEncoder:
    """Vocabulary 50, hidden 32, 4 heads, FFN 64, up to 32 positions; in eval mode."""
    torch.manual_seed(seed)
    return BertEncoder(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
    ).eval()
