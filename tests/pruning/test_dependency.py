"""The channel-dependency graph and its groups: couplings, index maps and frozen channels."""

from __future__ import annotations

import dataclasses

import networkx as nx
import pytest

from graphopt.pruning import build_channel_graph, find_groups, supported_ops
from tests.pruning import models
from tests.pruning.conftest import small_trace, zoo_trace


def _by_id(groups):
    return {g.id: g for g in groups}


def _members(group):
    return {str(m) for m in group.members}


def test_resnet18_couples_residual_stages_and_freezes_the_classifier() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = _by_id(find_groups(gm))
    assert len(groups) == 13  # stem+layer1, 3 later stages, 8 inner block convs, fc
    stem = groups["conv1"]
    assert {"conv1:out", "layer1.0.conv2:out", "layer1.1.conv2:out", "layer2.0.conv1:in"} <= (
        _members(stem)
    )
    assert {"layer2.0.downsample.0:in", "bn1:norm", "layer1.1.bn2:norm"} <= _members(stem)
    inner = groups["layer1.0.conv1"]
    assert _members(inner) == {"layer1.0.conv1:out", "layer1.0.bn1:norm", "layer1.0.conv2:in"}
    assert inner.num_units == 64 and inner.prunable_units == tuple(range(64))
    assert inner.members[0].indices[5] == (5,)
    fc = groups["fc"]
    assert fc.frozen and fc.frozen_reasons == ("reaches the model output",)
    last = next(g for g in groups.values() if "fc:in" in _members(g))
    assert not last.frozen and last.num_units == 512


def test_groups_are_immutable_and_canonical() -> None:
    _, gm1, _ = zoo_trace("resnet18")
    _, gm2, _ = zoo_trace("resnet18")
    first, second = find_groups(gm1), find_groups(gm2)
    assert first == second
    with pytest.raises(dataclasses.FrozenInstanceError):
        first[0].id = "x"
    assert isinstance(first[0].members, tuple) and isinstance(first[0].members[0].indices, tuple)


def test_dependency_graph_is_a_networkx_graph_of_coupled_layers() -> None:
    _, gm, _ = small_trace(models.SqueezeExcite)
    cg = build_channel_graph(gm)
    assert isinstance(cg.graph, nx.Graph)
    # stem, body and se2 outputs are coupled by the residual add and the gate's mul
    stem, body, se2 = (
        next(s.id for s in cg.spaces if s.module == name) for name in ("stem", "body", "se2")
    )
    assert nx.has_path(cg.graph, stem, body) and nx.has_path(cg.graph, stem, se2)
    vias = set().union(*(d["via"] for _, _, d in cg.graph.edges(data=True)))
    assert {"add", "mul"} <= vias


def test_mobilenet_depthwise_couples_input_and_output() -> None:
    _, gm, _ = zoo_trace("mobilenet_v2")
    groups = _by_id(find_groups(gm))
    expand = groups["features.2.conv.0.0"]
    assert {
        "features.2.conv.0.0:out",
        "features.2.conv.1.0:groups",
        "features.2.conv.1.0:out",
        "features.2.conv.2:in",
    } <= _members(expand)
    assert expand.widths == (1,) * 96


def test_densenet_concat_maps_channels_with_offsets() -> None:
    _, gm, _ = zoo_trace("densenet_tiny")
    groups = _by_id(find_groups(gm))
    first = groups["features.denseblock1.denselayer1.conv2"]
    # layer 3 reads cat([stem 16, layer1 8, layer2 8]): layer 1's channels sit at 16..23
    conv = next(m for m in first.members if m.module == "features.denseblock1.denselayer3.conv1")
    assert conv.role == "in" and conv.size == 32
    assert conv.indices == tuple((16 + u,) for u in range(8))
    stem = groups["features.conv0"]
    norm = next(m for m in stem.members if m.module == "features.denseblock1.denselayer3.norm1")
    assert norm.indices == tuple((u,) for u in range(16))


def test_vgg_flatten_expands_each_channel_to_its_spatial_positions() -> None:
    _, gm, _ = zoo_trace("vgg11_bn")
    last = _by_id(find_groups(gm))["features.25"]
    fc = next(m for m in last.members if m.module == "classifier.0")
    assert fc.role == "in" and fc.size == 512 * 7 * 7
    assert fc.indices[3] == tuple(range(3 * 49, 4 * 49))


def test_transformer_prunes_whole_heads() -> None:
    _, gm, _ = zoo_trace("transformer")
    groups = _by_id(find_groups(gm))
    heads = groups["layers.0.attn.q_proj"]
    assert heads.num_units == 4 and heads.widths == (32,) * 4 and not heads.frozen_units
    roles = {(m.module, m.role) for m in heads.members}
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert (f"layers.0.attn.{proj}", "out") in roles
    assert ("layers.0.attn.out_proj", "in") in roles
    assert sum(m.role == "shape" for m in heads.members) == 4  # 3 head splits + the merge
    q = next(m for m in heads.members if m.module == "layers.0.attn.q_proj")
    assert q.indices[1] == tuple(range(32, 64))
    stream = groups["token_embedding"]  # the residual stream: embeddings, LayerNorms, outputs
    assert {"position_embedding:out", "embedding_norm:norm", "pooler:in"} <= _members(stream)


@pytest.mark.parametrize(
    ("cls", "group", "reason"),
    [
        (models.Unknown, "conv1", "aten.cumsum.default at cumsum is not understood"),
        (models.InputResidual, "conv1", "combines them with x"),
    ],
)
def test_unknown_ops_and_graph_inputs_freeze_the_channels_they_touch(cls, group, reason) -> None:
    _, gm, _ = small_trace(cls)
    groups = _by_id(find_groups(gm))
    assert groups[group].frozen
    assert any(reason in r for r in groups[group].frozen_reasons)
    assert not groups["conv2"].frozen  # the rest of the model stays prunable


def test_grouped_conv_groupnorm_and_chunk_prune_whole_groups() -> None:
    _, gm, _ = small_trace(models.GroupedAndSplit)
    group = _by_id(find_groups(gm))["conv1"]
    assert group.num_units == 4  # 4 conv groups of 4 channels (GroupNorm has the same 4)
    roles = _members(group)
    assert {"grouped:groups", "gn:norm", "depthwise:groups", "chunk:split"} <= roles
    depthwise = next(m for m in group.members if str(m) == "depthwise:out")
    assert depthwise.indices[1] == tuple(range(8, 16))  # 4 inputs × multiplier 2
    assert len(group.frozen_units) == 2  # one unit per chunk keeps each chunk non-empty
    assert "keeps one channel per chunk" in group.frozen_reasons[0]


def test_channel_shuffle_couples_blocks_and_records_both_views() -> None:
    _, gm, _ = small_trace(models.ChannelShuffle)
    group = _by_id(find_groups(gm))["conv1"]
    assert group.num_units == 4
    conv2 = next(m for m in group.members if str(m) == "conv2:in")
    assert conv2.indices[0] == (0, 4, 8, 12)  # block 0 lands at every 4th channel
    assert sum(m.role == "shape" for m in group.members) == 2


def test_ignore_freezes_output_channels_of_a_module_and_its_children() -> None:
    _, gm, _ = zoo_trace("resnet18")
    groups = _by_id(find_groups(gm, ignore=("layer1",)))
    assert groups["layer1.0.conv1"].frozen and groups["layer1.1.conv1"].frozen
    assert groups["conv1"].frozen  # layer1's conv2 outputs are coupled to the stem's
    assert "ignore='layer1'" in groups["conv1"].frozen_reasons[0]
    assert not groups["layer2.0.conv1"].frozen


def test_supported_ops_lists_the_rules() -> None:
    ops = supported_ops()
    assert {"aten.conv2d", "aten.cat", "aten.scaled_dot_product_attention"} <= set(ops)
