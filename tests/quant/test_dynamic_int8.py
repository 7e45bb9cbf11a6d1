"""Dynamic int8 (``quantize: {scheme: dynamic}``): the torch simulation is what ONNX Runtime
computes, the ONNX file has ORT's dynamic int8 ops, int8 embeddings are the formula, and
options, the user's model and dynamic shapes behave."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from graphopt.backends import get_backend
from graphopt.capture import trace
from graphopt.errors import RecipeError
from graphopt.ir import get_tensor
from graphopt.pass_manager import PassManager
from graphopt.passes import PassContext, Quantize
from graphopt.passes.base import get_pass
from graphopt.quant.dynamic import (
    DYNAMIC_QUANTIZE,
    quantize_rows,
    simulate_dynamic_quantize,
)
from graphopt.zoo import get_model


def _dynamic(model, inputs, dynamic_shapes=None, **options):
    gm = trace(model, inputs, dynamic_shapes=dynamic_shapes)
    ctx = PassContext(inputs)
    result = PassManager([Quantize(scheme="dynamic", progress=False, **options)]).run(
        gm, inputs, context=ctx
    )
    return result.graph_module, result.stages[-1].stats


def _quantized(model, inputs, **options):
    """The pass alone (no pass manager): what the tests below inspect."""
    gm = trace(model, inputs)
    result = Quantize(scheme="dynamic", progress=False, **options).call(gm, PassContext(inputs))
    return result.graph_module, result.stats


def _ort(gm, inputs, tmp_path):
    backend = get_backend("onnxruntime", intra_op_threads=1, onnx_path=tmp_path / "m.onnx")
    return backend.compile(gm, inputs)


class _HFText(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state


class _HFVision(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).logits


def _text_inputs(vocab: int = 100, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, length), generator=gen)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2 :] = 0
    return ids, mask


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    return _HFText(BertModel(config)).eval(), _text_inputs()


def _distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64
    )
    return _HFText(DistilBertModel(config)).eval(), _text_inputs()


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=5,
    )
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return _HFVision(ViTForImageClassification(config)).eval(), (pixels,)


def _zoo():
    return get_model("transformer")


SEQ = ({1: {"name": "seq", "max": 64}}, {1: {"name": "seq", "max": 64}})
MODELS = {"zoo_transformer": _zoo, "bert": _bert, "distilbert": _distilbert, "vit": _vit}


def _assert_same_computation(got: np.ndarray, want: np.ndarray) -> None:
    """ORT and the torch simulation agree to float rounding: the same uint8 codes and int32
    sums, scaled in another order. A float difference of 1e-7 before a DynamicQuantizeLinear can
    flip one code by one step, which moves that token's row a little (seen in BERT: one row of
    32, at most 4e-4 of 3.8), so the bound is a step's worth, and nearly every value is equal
    to float rounding."""
    scale = max(1.0, float(np.abs(want).max()))
    diff = np.abs(got - want)
    assert diff.max() <= 2e-3 * scale
    assert (diff <= 1e-5 * scale).mean() >= 0.95


@pytest.fixture(scope="module")
def on_ort(tmp_path_factory):
    """Per model, built once: (float model, inputs, dynamic int8 graph, ORT session, file)."""
    cache = {}

    def get(name):
        if name not in cache:
            model, inputs = MODELS[name]()
            if name == "bert":  # through the pass manager, with the sequence declared dynamic
                gm, _ = _dynamic(model, inputs, dynamic_shapes=SEQ)
            else:
                gm, _ = _quantized(model, inputs)
            folder = tmp_path_factory.mktemp(name)
            cache[name] = (model, inputs, gm, _ort(gm, inputs, folder), folder / "m.onnx")
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_ort_runs_dynamic_int8_and_matches_the_torch_simulation(name, on_ort) -> None:
    model, inputs, gm, compiled, path = on_ort(name)
    ops = compiled.info["ort_op_counts"]
    fused = ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulIntegerToFloat", 0)
    exported = onnx.load(str(path)).graph.node
    lowered = sum(node.op_type == "MatMulInteger" for node in exported)
    # Every linear lowered (no weight dequantized in float), each fused by ORT's optimizer.
    assert not any(node.op_type == "DequantizeLinear" for node in exported)
    assert lowered >= 2 and fused == lowered, ops
    assert "MatMulInteger" not in ops
    got = compiled.run([t.numpy() for t in inputs])[0]
    want = gm(*inputs).detach().numpy()
    _assert_same_computation(got, want)
    with torch.no_grad():
        reference = model(*inputs).detach()
    cosine = torch.nn.functional.cosine_similarity(
        torch.from_numpy(got).flatten(), reference.flatten(), dim=0
    )
    assert cosine > 0.99


def test_onnx_file_has_the_dynamic_int8_ops_and_int8_tables(on_ort) -> None:
    _model, _inputs, _gm, _compiled, path = on_ort("bert")
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert any(list(i.dims) == [100, 64] for i in int8), "the word table is stored as int8"
    assert not any(
        i.data_type == onnx.TensorProto.FLOAT and list(i.dims) in ([100, 64], [64, 64])
        for i in graph.initializer
    ), "no float copy of a table or weight left in the file"


def test_simulation_is_dynamic_quantize_linear() -> None:
    """ONNX's DynamicQuantizeLinear, as ORT runs it, then DequantizeLinear: same values."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dql",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(0)
    for x in (
        torch.randn(7, 33, generator=gen) * 3 + 1,
        torch.rand(4, 9, generator=gen) + 0.5,  # all positive: the range still holds 0
        -torch.rand(4, 9, generator=gen),
        torch.zeros(3, 3),
    ):
        (want,) = session.run(None, {"x": x.numpy()})
        got = simulate_dynamic_quantize(x).numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * max(1.0, np.abs(want).max()))


def test_int8_embedding_is_the_per_row_formula() -> None:
    model, inputs = _bert()
    table = model.model.embeddings.word_embeddings.weight.detach()
    q, scales = quantize_rows(table)
    assert q.dtype == torch.int8 and scales.dtype == torch.float16
    assert scales.shape == (table.shape[0], 1)
    bound = table.abs().amax(1)
    want = torch.where(bound > 0, bound / 127, torch.ones_like(bound))  # a zero row: s = 1
    np.testing.assert_array_equal(scales.squeeze(1).numpy(), want.half().numpy())
    rounded = torch.clamp(torch.round(table / scales.float()), -127, 127)
    np.testing.assert_array_equal(q.numpy(), rounded.numpy())
    # Within half an int8 step of the float table (plus the float16 scale's rounding).
    error = (q.float() * scales.float() - table).abs()
    assert bool((error <= 0.5 * scales.float() * (1 + 2**-10) + 1e-12).all())
    gm, _ = _quantized(model, inputs)
    stored = dict(gm.named_buffers())
    rows = [t for name, t in stored.items() if name.endswith("word_embeddings.weight_int8")]
    assert len(rows) == 1 and torch.equal(rows[0], q)
    row_scales = [t for name, t in stored.items() if name.endswith("weight_row_scale")]
    assert any(torch.equal(t, scales) for t in row_scales)
    ids = inputs[0]
    out = torch.nn.functional.embedding(ids, rows[0]).float() * scales.float()[ids]
    want = (q.float() * scales.float())[ids]
    np.testing.assert_allclose(out.numpy(), want.numpy(), rtol=0, atol=0)


def test_static_int8_takes_int8_embeddings_too() -> None:
    model, inputs = get_model("transformer")
    gm = trace(model, inputs)
    gen = torch.Generator().manual_seed(3)
    calib = [(torch.randint(0, int(inputs[0].max()) + 1, inputs[0].shape, generator=gen),)]
    ctx = PassContext(inputs, {"calibration": calib})
    plain = Quantize(progress=False).call(gm, ctx)
    result = Quantize(embeddings="int8", progress=False).call(gm, ctx)
    out = result.graph_module
    tables = [
        get_tensor(out, n.args[0])
        for n in out.graph.nodes
        if n.target == torch.ops.aten.embedding.default
    ]
    assert result.stats["embeddings_int8"] == 2 == sum(t.dtype == torch.int8 for t in tables)
    assert plain.stats["embeddings_int8"] == 0  # auto: static tables stay float
    assert result.stats["cosine"] > 0.99
    assert result.stats["layers_int8"] == plain.stats["layers_int8"]


def test_user_model_is_not_mutated_and_a_second_run_changes_nothing() -> None:
    model, inputs = _zoo()
    before = copy.deepcopy(model.state_dict())
    gm, _ = _quantized(model, inputs)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(n.target == DYNAMIC_QUANTIZE for n in gm.graph.nodes)
    again = Quantize(scheme="dynamic", progress=False).call(gm, PassContext(inputs))
    assert not again.modified


@pytest.mark.parametrize(
    ("options", "named"),
    [({"scheme": "dynamik"}, "scheme"), ({"embeddings": "int4"}, "embeddings")],
)
def test_bad_options_are_one_line_errors_naming_the_option(options, named) -> None:
    with pytest.raises(RecipeError, match=named) as info:
        get_pass("quantize", **options)
    assert "\n" not in str(info.value).strip()


def test_dynamic_batch_and_sequence_still_work(on_ort) -> None:
    _model, _inputs, gm, compiled, _path = on_ort("bert")
    for batch, length in ((3, 24), (1, 9)):
        ids = torch.randint(0, 100, (batch, length), generator=torch.Generator().manual_seed(2))
        mask = torch.ones(batch, length, dtype=torch.long)
        got = compiled.run([ids.numpy(), mask.numpy()])[0]
        want = gm(ids, mask).detach().numpy()
        assert got.shape == (batch, length, 64)
        _assert_same_computation(got, want)


def test_dynamic_mixed_keeps_the_most_sensitive_layers_float() -> None:
    model, inputs = _zoo()
    gm = trace(model, inputs)
    quantize = Quantize(scheme="dynamic_mixed", min_cosine=0.9999999, progress=False)
    result = quantize.call(gm, PassContext(inputs))
    stats = result.stats
    assert stats["sensitivity"] and stats["layers_float"] >= 1
    assert stats["budget_met"] == (stats["cosine"] >= 0.9999999)
    kept = [r for r in stats["refused"] if r["reason"] == "kept in float by mixed precision"]
    assert kept and kept[0]["node"] == stats["sensitivity"][0]["node"]


def test_scales_in_the_file_are_the_graphs(on_ort) -> None:
    _model, _inputs, gm, _compiled, path = on_ort("zoo_transformer")
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = [
        v
        for k, v in inits.items()
        if k.startswith("graphopt_dynamic_int8_") and k.endswith("_scale")
    ]
    graph_scales = [t.numpy() for name, t in gm.named_buffers() if name.endswith("weight_scale")]
    assert len(scales) == len(graph_scales)
    assert {s.tobytes() for s in scales} == {s.astype(np.float32).tobytes() for s in graph_scales}


def test_saved_archive_keeps_the_dynamic_op_and_trains_straight_through(tmp_path) -> None:
    from graphopt.artifacts import load, save

    model, inputs = _zoo()
    gm, _ = _quantized(model, inputs)
    save(gm, inputs, tmp_path / "m.pt2")
    back = load(tmp_path / "m.pt2")
    assert any(n.target == DYNAMIC_QUANTIZE for n in back.graph.nodes)
    assert torch.equal(back(*inputs), gm(*inputs))
    x = torch.randn(3, 5, requires_grad=True)
    DYNAMIC_QUANTIZE(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # the gradient passes the rounding
