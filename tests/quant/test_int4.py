"""``quantize_weights``: block-wise int4/int8 weight-only linears, RTN and GPTQ, lowered to
ONNX Runtime's ``com.microsoft.MatMulNBits``."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import Tensor, nn

import graphopt
from graphopt.backends import get_backend
from graphopt.errors import PassError
from graphopt.options import OptionError
from graphopt.passes import Cluster, PassContext, QuantizeWeights, get_pass
from graphopt.weightonly import dequantize, find_quantized, pack_codes, quantize_rtn
from graphopt.weightonly.gptq import gptq_quantize


def _reference_rtn(weight: Tensor, bits: int, block: int, symmetric: bool) -> Tensor:
    """Block by block with plain Python loops: the formula of graphopt.weightonly.blocks."""
    n, k = weight.shape
    qmax = 2**bits - 1
    out = torch.empty(n, k)
    for row in range(n):
        for start in range(0, k, block):
            w = weight[row, start : start + block].float()
            if symmetric:
                m = w[w.abs().argmax()]
                s = m / -(2 ** (bits - 1)) if m != 0 else torch.tensor(1.0)
                z = torch.tensor(float(2 ** (bits - 1)))
            else:
                lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
                s = torch.tensor((hi - lo) / qmax, dtype=torch.float32)
                s = s if s != 0 else torch.tensor(1.0)
                z = torch.clamp(torch.round(-torch.tensor(lo, dtype=torch.float32) / s), 0, qmax)
            q = torch.clamp(torch.round(w / s) + z, 0, qmax)
            out[row, start : start + block] = (q - z) * s
    return out


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(
    ("bits", "block", "k"), [(4, 16, 64), (4, 32, 72), (4, 128, 200), (8, 32, 64)]
)
def test_rtn_is_the_per_block_formula(symmetric: bool, bits: int, block: int, k: int) -> None:
    weight = torch.randn(6, k, generator=torch.Generator().manual_seed(k))
    weight[0, :block] = 0.0  # an all-zero block: scale 1, codes at the zero point
    quant = quantize_rtn(weight, bits, block, symmetric)
    assert quant.codes.dtype == torch.uint8 and int(quant.codes.max()) <= 2**bits - 1
    assert quant.codes.shape == (6, -(-k // block), block)
    assert (quant.zeros is None) == symmetric
    expected = _reference_rtn(weight, bits, block, symmetric)
    torch.testing.assert_close(dequantize(quant), expected, rtol=0, atol=1e-6)
    assert dequantize(quant)[0, :block].eq(0).all()
    # at most half a step per weight (symmetric: a step, where 7/8 of the range is clipped)
    step = quant.scales.abs().expand(-1, -1, block).reshape(6, -1)[:, :k]
    bound = step if symmetric else step / 2
    assert ((dequantize(quant) - weight).abs() <= bound * (1 + 1e-5)).all()


@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_and_packing_equal_onnxruntime_quantizer(symmetric: bool) -> None:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    n, k, block = 24, 96, 32
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
    packed, scales, zeros = pack_codes(quantize_rtn(weight, 4, block, symmetric))
    blocks = k // block
    ort_packed = np.zeros((n, blocks, block // 2), dtype=np.uint8)
    ort_scales = np.zeros((n, blocks), dtype=np.float32)
    ort_zeros = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    w_kn = np.ascontiguousarray(weight.numpy().T)  # ORT quantizes MatMul's B, [K, N]
    quantize_matmul_4bits(ort_packed, w_kn, ort_scales, ort_zeros, block, n, k, symmetric)
    np.testing.assert_allclose(scales.numpy(), ort_scales.reshape(-1), rtol=1e-6)
    # codes equal except on exact rounding ties (ORT multiplies by 1/s and rounds half away)
    assert (packed.numpy() == ort_packed).mean() > 0.99
    if not symmetric:
        assert (zeros.numpy() == ort_zeros).mean() > 0.99


def _correlated_inputs(k: int, rows: int = 512) -> Tensor:
    gen = torch.Generator().manual_seed(7)
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    scale = torch.logspace(-1, 1, k)[torch.randperm(k, generator=gen)]  # a few large channels
    return torch.randn(rows, k, generator=gen) @ mix * scale


@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_lowers_the_layer_output_error_below_rtn(symmetric: bool) -> None:
    k, n = 96, 40
    x = _correlated_inputs(k)
    weight = torch.randn(n, k, generator=torch.Generator().manual_seed(8))
    hessian = 2 * x.T @ x / x.shape[0]
    rtn = quantize_rtn(weight, 4, 32, symmetric)
    gptq = gptq_quantize(weight, hessian, bits=4, block_size=32, symmetric=symmetric)

    def output_error(quant: object) -> float:
        return float((x @ dequantize(quant).T - x @ weight.T).pow(2).sum())

    assert output_error(gptq) < 0.8 * output_error(rtn)
    assert gptq.codes.dtype == torch.uint8 and gptq.codes.shape == rtn.codes.shape


def _zoo() -> tuple[nn.Module, tuple[Tensor, ...]]:
    torch.manual_seed(0)
    return graphopt.zoo.get_model("transformer", num_layers=1)


class _TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=100,
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=32,
        )
        self.bert = BertModel(config).eval()

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.bert(input_ids=ids, attention_mask=mask)  # the pooler: a 2-d linear, Gemm
        return out.last_hidden_state + out.pooler_output.unsqueeze(1)


def _bert() -> tuple[nn.Module, tuple[Tensor, ...]]:
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    return _TinyBert().eval(), (ids, torch.ones(2, 16, dtype=torch.long))


def _calibration(inputs: tuple[Tensor, ...], batches: int = 2) -> list[tuple[Tensor, ...]]:
    """Token ids redrawn per batch; attention masks and float inputs kept as they are."""
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(batches):
        out.append(
            tuple(
                torch.randint(0, 100, t.shape, generator=gen)
                if not t.is_floating_point() and t.max() > 1
                else t.clone()
                for t in inputs
            )
        )
    return out


def _quantize(model: nn.Module, inputs: tuple[Tensor, ...], **options: object):
    gm = graphopt.trace(model, inputs)
    ctx = PassContext(inputs, calibration=_calibration(inputs))
    result = QuantizeWeights(**options).run(gm, ctx)
    result.graph_module.recompile()
    return result


def _ops(path: object) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (_zoo, {"method": "gptq", "block_size": 32}),
        (_bert, {"symmetric": True, "block_size": 16}),
    ],
    ids=["zoo_transformer_gptq", "hf_bert_symmetric"],
)
def test_onnxruntime_matmulnbits_equals_the_torch_graph(factory, options, tmp_path) -> None:
    model, inputs = factory()
    result = _quantize(model, inputs, accuracy_level=1, **options)
    gm = result.graph_module
    quantized = result.stats["quantized"]
    assert quantized == len(find_quantized(gm)) > 0
    compiled = get_backend("onnxruntime", onnx_path=tmp_path / "q.onnx").compile(gm, inputs)
    out = compiled.run([t.numpy() for t in inputs])[0]
    expected = gm(*inputs).detach().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    # every quantized linear is a MatMulNBits; the float MatMuls left (attention) have no
    # constant operand, so none of them is a linear layer
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    constants = {init.name for init in graph.initializer}
    produced = {out: node for node in graph.node for out in node.output}
    assert [n.op_type for n in graph.node].count("MatMulNBits") == quantized
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            b = node.input[1]
            while b in produced and produced[b].op_type in ("Transpose", "Reshape", "Cast"):
                b = produced[b].input[0]
            assert b not in constants, f"{node.name} is a float MatMul with a constant weight"
    float_matrices = [
        i.name
        for i in graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 and "embedding" not in i.name
    ]
    assert not float_matrices  # the file holds packed codes, not float weights


def test_int8_and_folded_small_layers_lower_too(tmp_path) -> None:
    """Small layers, whose dequantization the exporter constant-folds, are matched by value;
    2-d inputs export as Gemm (the BERT case above covers the folded MatMul + Add)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 8)).eval()
    inputs = (torch.randn(3, 40),)
    gm = _quantize(model, inputs, bits=8, block_size=16, accuracy_level=0).graph_module
    path = tmp_path / "m.onnx"
    compiled = get_backend("onnxruntime", onnx_path=path).compile(gm, inputs)
    out = compiled.run([inputs[0].numpy()])[0]
    np.testing.assert_allclose(out, gm(*inputs).detach().numpy(), rtol=1e-5, atol=1e-6)
    ops = _ops(path)
    assert ops.count("MatMulNBits") == 2 and "MatMul" not in ops and "Gemm" not in ops


def test_gptq_beats_rtn_on_the_calibration_data_per_layer() -> None:
    model, inputs = _zoo()
    result = _quantize(model, inputs, method="gptq", block_size=32)
    rows = result.stats["layers"]
    assert rows and all(r["method"] == "gptq" for r in rows)
    assert all(r["output_error"] < r["output_error_rtn"] for r in rows)


def test_the_graph_survives_pt2_later_passes_and_a_second_run(tmp_path) -> None:
    model, inputs = _zoo()
    result = _quantize(model, inputs, block_size=64)
    gm = result.graph_module
    expected = gm(*inputs)
    # .pt2 round trip: the codes and the dequantization chain come back
    graphopt.save(gm, inputs, tmp_path / "m.pt2")
    loaded = graphopt.load(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded(*inputs), expected)
    assert len(find_quantized(loaded)) == result.stats["quantized"]
    graphopt.export_onnx(loaded, inputs, tmp_path / "m.onnx")
    assert _ops(tmp_path / "m.onnx").count("MatMulNBits") == result.stats["quantized"]
    # a second run and a later weight pass refuse the quantized layers, with the reason
    again = QuantizeWeights(block_size=64).run(gm, PassContext(inputs))
    assert not again.modified
    assert {r.reason for r in again.refusals} == {"already quantized (weight-only)"}
    clustered = Cluster(bits=4).run(gm, PassContext(inputs))
    assert all("computed" in r.reason for r in clustered.refusals if "proj" in r.node)
    # the pass manager's checks (lint, shapes, output comparison) accept the graph
    graphopt.PassManager([QuantizeWeights()]).run(graphopt.trace(model, inputs), inputs)


def test_skip_and_tied_layers_are_refused_and_conv1d_is_quantized() -> None:
    from transformers.pytorch_utils import Conv1D

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 32)
            self.fc = nn.Linear(32, 32)
            self.conv1d = Conv1D(32, 32)  # GPT-2's layer: addmm with a [K, N] weight
            self.head = nn.Linear(32, 50, bias=False)
            self.head.weight = self.embed.weight  # tied

        def forward(self, ids: Tensor) -> Tensor:
            return self.head(self.conv1d(self.fc(self.embed(ids))))

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 8))
    net = Net().eval()
    before = net.conv1d.weight.detach().clone()
    result = _quantize(net, (ids,), skip=["fc"])
    reasons = {r.node: r.reason for r in result.refusals}
    assert reasons["fc"] == "in skip"
    assert "shared" in reasons["head"]
    assert "conv1d" not in reasons and result.stats["conv1d_as_linear"] == 1
    assert result.modified and [r["layer"] for r in result.stats["layers"]] == ["conv1d"]
    assert torch.equal(net.conv1d.weight, before)  # the user's [in, out] weight untouched
    skipped = _quantize(net, (ids,), skip=["fc", "conv1d"])
    assert skipped.stats["quantized"] == 0
    assert "Conv1D" in {r.node: r.reason for r in skipped.refusals}["conv1d"]


def _gpt2() -> tuple[nn.Module, tuple[Tensor, ...]]:
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4)

    class Hidden(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gpt2 = GPT2Model(config).eval()

        def forward(self, ids: Tensor) -> Tensor:
            return self.gpt2(input_ids=ids, use_cache=False).last_hidden_state

    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    return Hidden().eval(), (ids,)


@pytest.mark.parametrize("bits", [4, 8])
def test_gpt2_conv1d_layers_run_as_matmulnbits(bits: int, tmp_path) -> None:
    model, inputs = _gpt2()
    with torch.no_grad():
        reference = model(*inputs)
    result = _quantize(model, inputs, bits=bits, accuracy_level=1)
    gm = result.graph_module
    assert result.stats["conv1d_as_linear"] == result.stats["quantized"] == 4 * 2
    assert not [r for r in result.refusals if "Conv1D" in r.reason]
    out = gm(*inputs).detach()
    cosine = torch.nn.functional.cosine_similarity(out.flatten(), reference.flatten(), dim=0)
    assert cosine > (0.99 if bits == 4 else 0.9999)
    compiled = get_backend("onnxruntime", onnx_path=tmp_path / "g.onnx").compile(gm, inputs)
    np.testing.assert_allclose(
        compiled.run([inputs[0].numpy()])[0], out.numpy(), rtol=1e-4, atol=1e-4
    )
    assert _ops(tmp_path / "g.onnx").count("MatMulNBits") == 8


def test_bad_options_are_one_line_errors() -> None:
    for options, needle in [
        ({"block_size": 24}, "quantize_weights.block_size: must be a power of two"),
        ({"block_size": 8}, "quantize_weights.block_size"),
        ({"bits": 3}, "quantize_weights.bits"),
        ({"method": "awq"}, "quantize_weights.method"),
    ]:
        with pytest.raises(OptionError) as info:
            get_pass("quantize_weights", **options)
        assert needle in str(info.value) and "\n" not in str(info.value)
    model, inputs = _zoo()
    gm = graphopt.trace(model, inputs)
    with pytest.raises(PassError, match=r"needs ctx\.calibration for GPTQ"):
        QuantizeWeights(method="gptq").run(gm, PassContext(inputs))
    with pytest.raises(PassError, match="skip entry 'nope' matches no conv/linear"):
        QuantizeWeights(skip=["nope"]).run(gm, PassContext(inputs))


def test_the_users_model_is_not_mutated() -> None:
    model, inputs = _zoo()
    before = copy.deepcopy(model.state_dict())
    run = graphopt.compress(model, inputs, [QuantizeWeights(block_size=32)])
    assert run.compressed is not model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert find_quantized(run.compressed) and not find_quantized(graphopt.trace(model, inputs))
