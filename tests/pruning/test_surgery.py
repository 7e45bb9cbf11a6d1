"""Surgery: parameters really sliced, size constants rewritten, dead channels removed exactly."""

from __future__ import annotations

import torch

from graphopt.analysis import analyze
from graphopt.pruning import PruningPlan, apply_plan, find_groups
from tests.helpers import aten, max_rel_diff
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


def _plan(gm, removals):
    return PruningPlan.for_groups(find_groups(gm), removals)


def _node(gm, module, op):
    return next(
        n
        for n in gm.graph.nodes
        if n.op == "call_function"
        and n.target.overloadpacket is op
        and list(n.meta.get("nn_module_stack", {}).values())[-1][0] == module
    )


def test_dead_channels_are_removed_exactly_from_a_bn_free_chain() -> None:
    model, gm, inputs = small_trace(models.ConvChain)
    dead = [1, 4, 6, 11]
    with torch.no_grad():
        model.conv1.weight[dead] = 0
        model.conv1.bias[dead] = 0
    gm = models.trace_again(model, inputs)
    expected = model(*inputs)
    apply_plan(gm, _plan(gm, {"conv1": dead}))
    assert gm.get_parameter("conv1.weight").shape == (12, 3, 3, 3)
    assert gm.get_parameter("conv1.bias").shape == (12,)
    assert gm.get_parameter("conv2.weight").shape == (16, 12, 3, 3)
    gm.graph.lint()
    assert max_rel_diff(expected, gm(*inputs)) <= 1e-5


def test_dead_channels_through_flatten_into_linear_are_exact() -> None:
    model, gm, inputs = small_trace(models.ConvChain)
    dead = [0, 2, 3, 9, 15]
    with torch.no_grad():
        model.conv2.weight[dead] = 0
        model.conv2.bias[dead] = 0
    gm = models.trace_again(model, inputs)
    apply_plan(gm, _plan(gm, {"conv2": dead}))
    assert gm.get_parameter("fc.weight").shape == (5, 11 * 16)
    assert max_rel_diff(model(*inputs), gm(*inputs)) <= 1e-5


def test_dead_channels_in_resnet18_with_batchnorm_are_exact() -> None:
    model, _, inputs = zoo_trace("resnet18")
    dead = list(range(0, 64, 3))
    with torch.no_grad():  # conv filters and the BN's affine zeroed: the channel is 0 after BN
        for m in (model.layer1[0].conv1, model.layer1[0].bn1):
            m.weight[dead] = 0
        model.layer1[0].bn1.bias[dead] = 0
    gm = models.trace_again(model, inputs)
    apply_plan(gm, _plan(gm, {"layer1.0.conv1": dead}))
    bn = _node(gm, "layer1.0.bn1", aten.batch_norm)
    assert all(gm.get_buffer(a.target).shape == (64 - len(dead),) for a in bn.args[3:5])
    assert max_rel_diff(model(*inputs), gm(*inputs)) <= 1e-5
    batch3 = torch.randn(3, 3, 32, 32)
    assert max_rel_diff(model(batch3), gm(batch3)) <= 1e-5  # the batch stays dynamic


def test_grouped_conv_groups_and_groupnorm_shrink_with_whole_groups() -> None:
    _, gm, inputs = small_trace(models.GroupedAndSplit)
    group = next(g for g in find_groups(gm) if g.id == "conv1")
    unit = group.prunable_units[0]
    apply_plan(gm, _plan(gm, {"conv1": [unit]}))
    grouped = _node(gm, "grouped", aten.conv2d)
    assert grouped.args[6] == 3 or grouped.kwargs.get("groups") == 3
    assert gm.get_parameter("grouped.weight").shape == (12, 4, 3, 3)
    assert _node(gm, "gn", aten.group_norm).args[1] == 3
    assert gm.get_parameter("depthwise.weight").shape == (24, 1, 3, 3)
    split = next(n for n in gm.graph.nodes if n.target is aten.split_with_sizes.default)
    assert sum(split.args[1]) == 24 and min(split.args[1]) >= 8
    assert gm(*inputs).shape == (2, 3)


def test_head_pruning_slices_qkv_and_rewrites_the_view_constants() -> None:
    _, gm, _ = zoo_trace("transformer")
    before = analyze(gm).macs
    apply_plan(gm, _plan(gm, {"layers.0.attn.q_proj": [2]}))
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert gm.get_parameter(f"layers.0.attn.{proj}.weight").shape == (96, 128)
    assert gm.get_parameter("layers.0.attn.out_proj.weight").shape == (128, 96)
    views = [n for n in gm.graph.nodes if n.target in (aten.view.default, aten.reshape.default)]
    sizes = [list(n.args[1])[1:] for n in views[:4]]
    assert sizes == [[16, 3, 32]] * 3 + [[16, 96]]
    assert analyze(gm).macs < before
    assert gm(torch.randint(0, 1000, (3, 16))).shape == (3, 10)


def test_channel_shuffle_views_follow_the_kept_blocks() -> None:
    _, gm, inputs = small_trace(models.ChannelShuffle)
    apply_plan(gm, _plan(gm, {"conv1": [1]}))
    view = next(n for n in gm.graph.nodes if n.target is aten.view.default)
    assert list(view.args[1])[1:3] == [3, 4]
    assert gm.get_parameter("conv2.weight").shape == (8, 12, 1, 1)
    assert gm(*inputs).shape == (2, 2)


def test_layernorm_and_embeddings_follow_the_residual_stream() -> None:
    _, gm, _ = zoo_trace("transformer")
    removed = list(range(0, 128, 4))
    apply_plan(gm, _plan(gm, {"token_embedding": removed}))
    assert gm.get_parameter("token_embedding.weight").shape == (1000, 96)
    assert gm.get_parameter("position_embedding.weight").shape == (128, 96)
    assert gm.get_parameter("layers.1.ffn_norm.weight").shape == (96,)
    norm = next(n for n in gm.graph.nodes if n.target is aten.layer_norm.default)
    assert list(norm.args[1]) == [96]
    assert gm.get_parameter("pooler.weight").shape == (128, 96)
    assert gm(torch.randint(0, 1000, (2, 16))).shape == (2, 10)
