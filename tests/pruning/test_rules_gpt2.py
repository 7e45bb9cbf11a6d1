"""HF GPT-2 from a config: Conv1D (addmm), the fused q/k/v split, heads and the tied LM head.

Before the addmm rule, the right-aligned reshape and tied parameters, GPT-2's residual stream
and MLPs were frozen. Now the prune pass cuts channels everywhere but the vocabulary, the
pruned model runs and exports to ONNX Runtime, and the embedding stays tied to the LM head.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import relative_diff
from graphopt.backends.onnxruntime import OnnxRuntimeBackend
from graphopt.capture import trace
from graphopt.pass_manager import PassManager
from graphopt.passes.base import get_pass
from graphopt.pruning import find_groups
from tests.pruning.exactness import prune_dead

transformers = pytest.importorskip("transformers")

H0, H1 = "model.transformer.h.0", "model.transformer.h.1"


class Logits(nn.Module):
    """GPT-2 with the LM head, returning only the logits (no cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def gpt2() -> tuple[torch.fx.GraphModule, tuple[Tensor, ...]]:
    config = transformers.GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Logits(transformers.GPT2LMHeadModel(config)).eval()
    ids = torch.randint(0, 100, (1, 16), generator=torch.Generator().manual_seed(0))
    return trace(model, (ids,)), (ids,)


def _copy(gpt2):
    """A fresh copy of the module's trace (tests prune it in place)."""
    gm, inputs = gpt2
    return copy.deepcopy(gm), inputs


def test_gpt2_groups_stream_mlp_and_heads_are_prunable(gpt2) -> None:
    gm, _ = _copy(gpt2)
    groups = {g.id: g for g in find_groups(gm)}
    stream = groups["model.transformer.wte"]
    assert stream.num_units == 64 and not stream.frozen_units
    roles = {str(m) for m in stream.members}
    assert {f"{H0}.attn.c_attn:in", f"{H1}.mlp.c_proj:out", "model.lm_head:in"} <= roles
    assert not groups[f"{H0}.mlp.c_fc"].frozen_units
    heads = groups[f"{H0}.attn.c_attn"]
    assert heads.num_units == 4 and heads.widths == (48,) * 4  # q, k, v: 16 channels each
    assert groups["model.lm_head"].frozen  # the vocabulary reaches the output


def test_gpt2_mlp_channels_and_heads_are_removed_exactly(gpt2) -> None:
    gm, inputs = _copy(gpt2)
    removals = {f"{H0}.mlp.c_fc": [3, 100, 255], f"{H1}.attn.c_attn": [2]}
    _, pruned = prune_dead(gm, inputs, removals)
    assert pruned.get_parameter(f"{H0}.mlp.c_fc.weight").shape == (64, 253)
    assert pruned.get_parameter(f"{H0}.mlp.c_proj.weight").shape == (253, 64)
    assert pruned.get_parameter(f"{H1}.attn.c_attn.weight").shape == (64, 144)
    assert pruned.get_parameter(f"{H1}.attn.c_proj.weight").shape == (48, 64)


def test_gpt2_prune_pass_runs_stays_tied_and_matches_onnxruntime(gpt2) -> None:
    gm, inputs = _copy(gpt2)
    result = PassManager([get_pass("prune", ratio=0.3)]).run(gm, inputs)
    stats, pruned = result.stages[-1].stats, result.graph_module
    assert stats["channels_removed"] > 0 and stats["params_after"] < stats["params_before"]
    assert "model.transformer.wte" in stats["plan"]["groups"]
    wte = pruned.get_parameter("model.transformer.wte.weight")
    assert wte is pruned.get_parameter("model.lm_head.weight") and wte.shape == (100, 45)
    assert pruned(torch.randint(0, 100, (3, 16))).shape == (3, 16, 100)
    compiled = OnnxRuntimeBackend().compile(pruned, inputs)
    with torch.no_grad():
        expected = flat_torch_outputs(pruned(*inputs))
    assert relative_diff(expected, compiled.run(to_numpy_inputs(inputs))) <= 1e-4
