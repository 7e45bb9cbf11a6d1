"""Rules for pads, upsampling, InstanceNorm, PReLU, transposed convs, pixel and channel shuffle,
products with a parameter operand and tied parameters: channels really go, exactly.

Each test prunes a small model that uses the op (``tests.pruning.coverage_models``), checks
that the group is prunable and the weights shrink, and that the pruned graph computes what
the dense one with the removed channels zeroed does (``tests.pruning.exactness``).
"""

from __future__ import annotations

import pytest
import torch

from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import relative_diff
from graphopt.backends.onnxruntime import OnnxRuntimeBackend
from graphopt.capture import trace
from graphopt.ir import count_parameters
from graphopt.pass_manager import PassManager
from graphopt.passes.base import get_pass
from graphopt.pruning import find_groups, supported_ops
from graphopt.pruning.importance import member_scores
from tests.pruning import coverage_models as cm
from tests.pruning import models
from tests.pruning import thirdparty_models as tm
from tests.pruning.exactness import group, prune_dead

IMAGE = (2, 3, 8, 8)


def _trace(model: torch.nn.Module, x: torch.Tensor):
    model = models.seeded(model)
    return trace(model, (x,)), (x,)


def _image(cls: type, shape: tuple[int, ...] = IMAGE, *args):
    return _trace(cls(*args), torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def _member(g, text: str):
    return next(m for m in g.members if str(m) == text)


# --------------------------------------------------------------------------- padding, upsampling


def test_spatial_pads_pass_channels_and_a_channel_pad_shifts_them() -> None:
    gm, inputs = _image(cm.Pads)
    assert not group(gm, "conv1").frozen_units and not group(gm, "conv2").frozen_units
    conv3 = _member(group(gm, "conv2"), "conv3:in")
    assert conv3.size == 11 and conv3.indices[0] == (2,)  # two constant channels before
    _, pruned = prune_dead(gm, inputs, {"conv1": [1, 5], "conv2": [0, 3, 7]})
    assert pruned.get_parameter("conv1.weight").shape == (6, 3, 3, 3)
    assert pruned.get_parameter("conv2.weight").shape == (5, 6, 3, 3)
    assert pruned.get_parameter("conv3.weight").shape == (4, 8, 1, 1)


@pytest.mark.parametrize(
    ("pad", "mode", "reason"),
    [
        ((1, 1, 1, 1, 1, 1), "reflect", "pads them with copies of channels"),
        ((0, 0, 0, 0, -1, 0), "constant", "crops them"),
    ],
)
def test_copying_or_cropping_the_channel_dim_freezes_it(pad, mode, reason) -> None:
    gm, _ = _trace(cm.PadsTheChannels(pad, mode), torch.randn(IMAGE))
    conv1 = group(gm, "conv1")
    assert conv1.frozen and any(reason in r for r in conv1.frozen_reasons)


def test_every_interpolate_mode_passes_the_channels() -> None:
    gm, inputs = _image(cm.Upsampling)
    ops = {n.target.overloadpacket.__name__ for n in gm.graph.nodes if n.op == "call_function"}
    assert {"upsample_bicubic2d", "_upsample_nearest_exact2d", "_upsample_bilinear2d_aa"} <= ops
    assert not group(gm, "conv1").frozen_units
    _, pruned = prune_dead(gm, inputs, {"conv1": [0, 2, 4]})
    assert pruned.get_parameter("conv2.weight").shape == (4, 5, 3, 3)


# --------------------------------------------------------------------------- norms and PReLU


def test_instance_norm_and_prelu_are_sliced_with_the_channels() -> None:
    gm, inputs = _image(cm.InstanceNormPReLU)
    roles = {str(m) for m in group(gm, "conv1").members}
    assert {"in1:norm", "act1:channelwise", "conv2:in"} <= roles
    assert not group(gm, "conv2").frozen_units
    _, pruned = prune_dead(gm, inputs, {"conv1": [2, 3], "conv2": [1, 6, 7]})
    assert pruned.get_parameter("in1.weight").shape == (6,)
    assert pruned.get_parameter("act1.weight").shape == (6,)
    assert pruned.get_parameter("act2.weight").shape == (1,)  # one slope for all: unchanged
    assert pruned.get_buffer("in2.running_mean").shape == (5,)
    assert pruned.get_parameter("in2.bias").shape == (5,)
    assert pruned.get_parameter("conv3.weight").shape == (4, 5, 1, 1)


# --------------------------------------------------------------------------- transposed convs


def test_unet_transposed_convs_prune_through_the_skip_and_the_groups() -> None:
    gm, inputs = _image(cm.UNet)
    skip = group(gm, "enc")
    assert {"enc:out", "up:out", "down:in", "dec:in"} <= {str(m) for m in skip.members}
    dec = group(gm, "dec")
    assert dec.num_units == 3 and dec.widths == (2,) * 3  # 3 groups of the grouped ConvT
    removals = {"enc": [1, 4], "down": [0, 9, 15], "dec": [1]}
    _, pruned = prune_dead(gm, inputs, removals)
    assert pruned.get_parameter("enc.weight").shape == (6, 3, 3, 3)
    assert pruned.get_parameter("up.weight").shape == (13, 6, 2, 2)  # [in, out, k, k]
    assert pruned.get_parameter("up.bias").shape == (6,)
    assert pruned.get_parameter("dec.weight").shape == (6, 4, 3, 3)
    assert pruned.get_parameter("grouped.weight").shape == (4, 2, 3, 3)  # [in, out/groups, …]
    grouped = next(n for n in pruned.graph.nodes if "grouped" in str(n.meta.get("nn_module_stack")))
    assert grouped.args[6] == 2
    assert pruned.get_parameter("head.weight").shape == (2, 4, 1, 1)
    batch3 = torch.randn(3, 3, 8, 8)
    assert pruned(batch3).shape == (3, 2, 16, 16)


@pytest.mark.parametrize(
    ("cls", "shape", "removals", "shapes"),
    [
        (
            cm.Transposed1d,
            (2, 3, 10),
            {"conv": [1], "up2": [0, 3]},
            {"up1.weight": (4, 3, 4), "up2.weight": (3, 3, 3), "head.weight": (2, 3, 1)},
        ),
        (
            cm.Transposed3d,
            (2, 2, 4, 4, 4),
            {"conv": [0, 5], "up": [2]},
            {"up.weight": (4, 3, 2, 2, 2), "up.bias": (3,), "head.weight": (2, 3, 1, 1, 1)},
        ),
    ],
)
def test_transposed_conv1d_and_3d(cls, shape, removals, shapes) -> None:
    gm, inputs = _image(cls, shape)
    _, pruned = prune_dead(gm, inputs, removals)
    for name, expected in shapes.items():
        assert pruned.get_parameter(name).shape == expected


# --------------------------------------------------------------------------- shuffles


def test_pixel_shuffle_removes_whole_blocks_and_unshuffle_spreads_channels() -> None:
    gm, inputs = _image(cm.PixelShuffle)
    first = group(gm, "conv1")
    assert first.num_units == 4 and _member(first, "conv1:out").indices[1] == (4, 5, 6, 7)
    assert _member(group(gm, "conv2"), "conv3:in").indices[2] == (8, 9, 10, 11)
    _, pruned = prune_dead(gm, inputs, {"conv1": [1], "conv2": [0, 5]})
    assert pruned.get_parameter("conv1.weight").shape == (12, 3, 3, 3)
    assert pruned.get_parameter("conv2.weight").shape == (6, 3, 3, 3)
    assert pruned.get_parameter("conv3.weight").shape == (4, 24, 1, 1)


def test_channel_shuffle_with_equal_sides_prunes_whole_groups_exactly() -> None:
    gm, inputs = _image(models.ChannelShuffle)
    _, pruned = prune_dead(gm, inputs, {"conv1": [2]})
    assert pruned.get_parameter("conv1.weight").shape == (12, 3, 1, 1)
    assert pruned.get_parameter("conv2.weight").shape == (8, 12, 1, 1)


def test_shufflenet_unit_prunes_the_same_channel_of_both_groups() -> None:
    gm, inputs = _image(cm.ShuffleUnit)
    stem = group(gm, "stem")
    assert stem.num_units == 16 and len(stem.frozen_units) == 2  # one per chunk
    branch = _member(stem, "branch:out")
    paired = [u for u, ix in enumerate(branch.indices) if ix]
    head = _member(stem, "head:in")
    assert head.indices[paired[3]] == (6, 7)  # stem channel 3 and branch channel 3, side by side
    units = [paired[1], paired[4], next(u for u in stem.prunable_units if u not in paired)]
    _, pruned = prune_dead(gm, inputs, {"stem": units})
    assert pruned.get_parameter("stem.weight").shape == (13, 3, 1, 1)
    assert pruned.get_parameter("branch.weight").shape == (6, 7, 3, 3)
    assert pruned.get_parameter("head.weight").shape == (4, 12, 1, 1)


# --------------------------------------------------------------------------- parameter products


def test_einsum_matmul_mm_with_parameter_operands_are_layers() -> None:
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))
    gm, inputs = _trace(cm.ParamProducts(), x)
    assert {"einsum", "matmul", "mm", "matmul_1"} <= {g.id for g in find_groups(gm)}
    assert "add:channelwise" in {str(m) for m in group(gm, "matmul").members}
    removals = {"einsum": [0, 7], "matmul": [3], "mm": [1, 2], "matmul_1": [5]}
    _, pruned = prune_dead(gm, inputs, removals)
    assert pruned.get_parameter("w1").shape == (8, 14)
    assert pruned.get_parameter("w2").shape == (14, 11)
    assert pruned.get_parameter("b2").shape == (11,)
    assert pruned.get_parameter("w3").shape == (11, 8)
    assert pruned.get_parameter("wl").shape == (5, 8)
    assert pruned.get_parameter("out.weight").shape == (3, 5)


def test_gpt2_conv1d_addmm_prunes_the_stream_and_the_mlp() -> None:
    pytest.importorskip("transformers")
    ids = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(1))
    gm, inputs = _trace(cm.Conv1DBlock(), ids)
    assert not group(gm, "embed").frozen_units and not group(gm, "c_fc").frozen_units
    _, pruned = prune_dead(gm, inputs, {"embed": [0, 9], "c_fc": [4, 5, 31]})
    assert pruned.get_parameter("c_fc.weight").shape == (14, 29)  # Conv1D: [in, out]
    assert pruned.get_parameter("c_fc.bias").shape == (29,)
    assert pruned.get_parameter("c_proj.weight").shape == (29, 14)
    assert pruned.get_parameter("head.weight").shape == (14, 5)


# --------------------------------------------------------------------------- tied parameters


def test_tied_embedding_and_lm_head_are_pruned_once_and_stay_tied() -> None:
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(1))
    gm, inputs = _trace(cm.TiedLM(), ids)
    stream = group(gm, "embed")
    assert not stream.frozen_units and "lm_head:in" in {str(m) for m in stream.members}
    head = group(gm, "lm_head")
    assert any("keeps its dim 0 whole" in r for r in head.frozen_reasons)  # vocab rows stay
    assert count_parameters(gm) == 40 * 16 + (32 * 16 + 32) + (16 * 32 + 16)  # the tie: once
    _, pruned = prune_dead(gm, inputs, {"embed": [1, 2, 8], "fc1": [0]})
    assert pruned.embed.weight is pruned.lm_head.weight
    assert pruned.embed.weight.shape == (40, 13)
    assert count_parameters(pruned) == 40 * 13 + (31 * 13 + 31) + (13 * 31 + 13)


def test_a_conv_applied_twice_ties_its_inputs_and_outputs() -> None:
    gm, inputs = _image(cm.ConvTwice)
    stem = group(gm, "stem")
    assert sum(m.role == "out" for m in stem.members) == 3 and not stem.frozen_units
    _, pruned = prune_dead(gm, inputs, {"stem": [0, 6]})
    assert pruned.get_parameter("shared.weight").shape == (6, 6, 3, 3)
    assert pruned.get_parameter("stem.weight").shape == (6, 3, 3, 3)


def test_a_parameter_also_read_by_an_unknown_op_freezes_its_channels() -> None:
    gm, _ = _trace(cm.SharedWithUnknown(), torch.randn(2, 6))
    fc1 = group(gm, "fc1")
    assert (
        fc1.frozen and "shared with cumsum, which pruning does not slice" in fc1.frozen_reasons[0]
    )


@pytest.mark.parametrize(
    ("cls", "gid", "member", "weight", "summed"),
    [
        (cm.UNet, "enc", "up:out", "up.weight", (0, 2, 3)),  # ConvT [in, out, k, k]
        (cm.UNet, "down", "up:in", "up.weight", (1, 2, 3)),
        (cm.UNet, "dec", "grouped:groups", "grouped.weight", (1, 2, 3)),  # rows: inputs
        (cm.Transposed3d, "conv", "up:in", "up.weight", (1, 2, 3, 4)),
    ],
)
def test_importance_reads_the_weight_dims_the_rules_record(cls, gid, member, weight, summed):
    gm, _ = _image(cls, (2, 2, 4, 4, 4) if cls is cm.Transposed3d else IMAGE)
    g = group(gm, gid)
    m = _member(g, member)
    node = next(n for n in gm.graph.nodes if n.name == m.node)
    scores = member_scores(gm, node, m, g.num_units, "l1")
    per_position = gm.get_parameter(weight).detach().abs().sum(summed).double()
    expected = torch.stack([per_position[list(ix)].sum() for ix in m.indices])
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=0)


def test_supported_ops_lists_the_new_rules() -> None:
    expected = {"aten.pad", "aten.instance_norm", "aten.prelu", "aten.conv_transpose2d"}
    expected |= {"aten.addmm", "aten.einsum", "aten.pixel_shuffle", "aten.upsample_bicubic2d"}
    assert expected <= set(supported_ops())


# --------------------------------------------------------------------------- the pass, ONNX


def test_the_prune_pass_shrinks_a_unet() -> None:
    gm, inputs = _image(cm.UNet)
    result = PassManager([get_pass("prune", ratio=0.5)]).run(gm, inputs)
    stats = result.stages[-1].stats
    assert stats["channels_removed"] > 0 and stats["params_after"] < stats["params_before"]
    assert result.graph_module(torch.randn(3, 3, 8, 8)).shape == (3, 2, 16, 16)


@pytest.mark.parametrize(
    ("cls", "removals"),
    [
        (cm.Pads, {"conv1": [1, 5], "conv2": [0]}),
        (cm.InstanceNormPReLU, {"conv1": [2], "conv2": [1, 6]}),
        (cm.UNet, {"enc": [1], "down": [0, 9], "dec": [1]}),
        (cm.PixelShuffle, {"conv1": [1], "conv2": [0, 5]}),
        (cm.ShuffleUnit, {"stem": [3, 12]}),
    ],
)
def test_pruned_conv_models_export_to_onnx_and_match(cls, removals) -> None:
    gm, inputs = _image(cls)
    _, pruned = prune_dead(gm, inputs, removals)
    compiled = OnnxRuntimeBackend().compile(pruned, inputs)
    with torch.no_grad():
        expected = flat_torch_outputs(pruned(*inputs))
    assert relative_diff(expected, compiled.run(to_numpy_inputs(inputs))) <= 1e-4


# --------------------------------------------------------------------------- third-party patterns
# (tests.pruning.thirdparty_models: what the architectures of tests/coverage needed)

TOKENS = (2, 4, 8)


def _tokens(model: torch.nn.Module, shape: tuple[int, ...] = TOKENS):
    return _trace(model, torch.randn(shape, generator=torch.Generator().manual_seed(1)))


def test_a_layer_scale_through_unsqueeze_and_an_inplace_dropout_are_sliced() -> None:
    gm, inputs = _image(tm.LayerScale)
    stream = group(gm, "conv1")
    assert not stream.frozen_units
    assert "unsqueeze:channelwise" in {str(m) for m in stream.members}
    _, pruned = prune_dead(gm, inputs, {"conv1": [0, 5]})
    assert pruned.get_parameter("gamma").shape == (6,)
    assert pruned.get_parameter("conv2.weight").shape == (6, 6, 1, 1)


def test_a_class_token_expanded_over_the_batch_is_cut_with_the_stream() -> None:
    gm, inputs = _trace(tm.ClassToken(), torch.randn(2, 4, 6))
    stream = group(gm, "embed")
    assert not stream.frozen_units
    assert {"expand:channelwise", "add:channelwise"} <= {str(m) for m in stream.members}
    assert "fc:out" in {str(m) for m in stream.members}  # the residual joins it
    _, pruned = prune_dead(gm, inputs, {"embed": [1, 6]})
    assert pruned.get_parameter("cls").shape == (1, 1, 6)
    assert pruned.get_parameter("fc.weight").shape == (6, 6)
    assert pruned.get_parameter("pos").shape == (1, 5, 6)
    assert pruned.get_parameter("head.weight").shape == (3, 6)


def test_eager_attention_matmuls_couple_the_heads_of_q_k_and_v() -> None:
    gm, inputs = _tokens(tm.EagerAttention())
    heads = group(gm, "q")
    assert heads.num_units == 2 and not heads.frozen_units
    assert {"q:out", "k:out", "v:out", "o:in"} <= {str(m) for m in heads.members}
    assert sum(m.role == "heads" for m in heads.members) == 2  # q @ kᵀ and p @ v
    _, pruned = prune_dead(gm, inputs, {"q": [1]})
    assert pruned.get_parameter("k.weight").shape == (4, 8)
    assert pruned.get_parameter("o.weight").shape == (8, 4)


def test_a_product_with_fixed_channels_on_its_batch_dim_freezes_them() -> None:
    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            # fc's channels on batch dim 1 of the product; y is full-size there: fixed
            return self.fc(x).transpose(1, 2).unsqueeze(-1) @ y

    x, y = torch.randn(2, 3, 8), torch.randn(2, 8, 1, 5)
    gm = trace(models.seeded(Fixed()), (x, y))
    fc = group(gm, "fc")
    assert fc.frozen and any("fixed size" in r for r in fc.frozen_reasons)


def test_reshape_as_after_a_flattened_batch_norm_follows_the_channels() -> None:
    gm, inputs = _trace(tm.FlatBatchNorm(), torch.randn(2, 4, 6))
    g = group(gm, "fc1")
    assert not g.frozen_units and "bn:norm" in {str(m) for m in g.members}
    _, pruned = prune_dead(gm, inputs, {"fc1": [2, 3, 7]})
    assert pruned.get_buffer("bn.running_var").shape == (5,)
    assert pruned.get_parameter("fc2.weight").shape == (3, 5)


@pytest.mark.parametrize("table", ["embedding", "gather"])
def test_a_per_head_position_bias_is_cut_with_its_head(table: str) -> None:
    gm, inputs = _tokens(tm.BiasedAttention(table))
    heads = group(gm, "q")
    table_member = "rel:out" if table == "embedding" else "index:out"  # a bare parameter
    assert not heads.frozen_units and table_member in {str(m) for m in heads.members}
    _, pruned = prune_dead(gm, inputs, {"q": [0]})
    weight = pruned.get_parameter("rel.weight" if table == "embedding" else "rel")
    assert weight.shape == (7, 1)
    assert pruned.get_parameter("v.weight").shape == (4, 8)


def test_one_head_prunes_the_channels_of_q_k_together_and_of_v_alone() -> None:
    gm, inputs = _tokens(tm.OneHead())
    qk, v = group(gm, "q"), group(gm, "v")
    assert {"q:out", "k:out"} <= {str(m) for m in qk.members} and not qk.frozen_units
    assert "o:in" in {str(m) for m in v.members} and not v.frozen_units
    _, pruned = prune_dead(gm, inputs, {"q": [0, 9], "v": [3]})
    assert pruned.get_parameter("k.weight").shape == (14, 8)
    assert pruned.get_parameter("o.weight").shape == (8, 15)


def test_one_head_under_the_default_scale_keeps_q_and_k() -> None:
    gm, _ = _tokens(tm.OneHead(scale=None))
    qk = group(gm, "q")
    assert qk.frozen and any("default scale" in r for r in qk.frozen_reasons)
    assert not group(gm, "v").frozen_units  # the value channels do not touch the scale


def test_grouped_query_heads_go_with_the_key_value_head_they_share() -> None:
    gm, inputs = _tokens(tm.GroupedQueryAttention())
    heads = group(gm, "q")
    assert heads.num_units == 2 and heads.widths == (8, 8)  # 2 query heads per unit
    assert {"k:out", "v:out", "o:in"} <= {str(m) for m in heads.members}
    assert sum(m.role == "shape" and m.op == "aten.expand.default" for m in heads.members) == 2
    _, pruned = prune_dead(gm, inputs, {"q": [0]})
    assert pruned.get_parameter("q.weight").shape == (8, 8)
    assert pruned.get_parameter("k.weight").shape == (4, 8)
    assert pruned.get_parameter("o.weight").shape == (8, 8)


def test_a_roll_along_the_spatial_dims_passes_and_along_the_channels_freezes() -> None:
    gm, inputs = _image(tm.Rolled)
    assert not group(gm, "conv1").frozen_units
    _, pruned = prune_dead(gm, inputs, {"conv1": [2, 4]})
    assert pruned.get_parameter("conv2.weight").shape == (4, 6, 1, 1)
    gm, _ = _image(tm.Rolled, IMAGE, (1,))
    conv1 = group(gm, "conv1")
    assert conv1.frozen and any("rolls the channels" in r for r in conv1.frozen_reasons)


@pytest.mark.parametrize(
    ("model", "shape", "removals"),
    [
        (tm.EagerAttention(), TOKENS, {"q": [0]}),
        (tm.GroupedQueryAttention(), TOKENS, {"q": [1]}),
        (tm.BiasedAttention("gather"), TOKENS, {"q": [1], "v": []}),
        (tm.ClassToken(), (2, 4, 6), {"embed": [0, 3]}),
        (tm.LayerScale(), IMAGE, {"conv1": [1]}),
    ],
)
def test_pruned_third_party_patterns_export_to_onnx_and_match(model, shape, removals) -> None:
    gm, inputs = _trace(model, torch.randn(shape, generator=torch.Generator().manual_seed(1)))
    _, pruned = prune_dead(gm, inputs, removals)
    compiled = OnnxRuntimeBackend().compile(pruned, inputs)
    with torch.no_grad():
        expected = flat_torch_outputs(pruned(*inputs))
    assert relative_diff(expected, compiled.run(to_numpy_inputs(inputs))) <= 1e-4
