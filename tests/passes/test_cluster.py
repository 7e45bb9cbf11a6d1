"""The ``cluster`` pass: codebooks that stay codebooks through recovery, int8 and export."""

from __future__ import annotations

import math

import pytest
import torch
from dahuffman import HuffmanCodec
from hypothesis import HealthCheck, given, settings
from torch import nn
from torch.nn.utils import parametrize

from graphopt.capture import trace
from graphopt.codebook.form import CODEBOOK_META, codebook_tensors, lookup
from graphopt.codebook.kmeans import fit_codebook
from graphopt.codebook.storage import code_bytes, huffman_bits
from graphopt.errors import PassError
from graphopt.options import OptionError
from graphopt.pass_manager import PassManager
from graphopt.passes import Cluster, Sparsify, get_pass
from graphopt.sparsity.layers import find_weights
from graphopt.sparsity.masks import MASK_META
from tests.helpers import max_rel_diff
from tests.passes.test_sparsify import INPUTS, WEIGHTS, _context, _model
from tests.strategies import random_models


def _run(*passes: object, model: nn.Module | None = None) -> tuple:
    model = model or _model()
    result = PassManager(list(passes)).run(trace(model, INPUTS), INPUTS, context=_context(model))
    return result.graph_module, result.stages


def _weight(gm: torch.fx.GraphModule, name: str) -> torch.Tensor:
    """The layer's effective weight, in either form."""
    centroids, index = codebook_tensors(gm, name)
    return lookup(centroids, index).detach()


def _few_values(levels: int) -> nn.Module:
    model = _model()
    with torch.no_grad():
        for name in WEIGHTS:
            weight = model.get_parameter(name)
            grid = torch.linspace(-0.3, 0.3, levels)
            weight.copy_(grid[torch.randint(0, levels, weight.shape)])
    return model


@pytest.mark.parametrize("form", ["gather", "dense"])
def test_eight_bits_on_layers_of_at_most_256_values_changes_nothing(form: str) -> None:
    model = _few_values(200)
    gm, stages = _run(Cluster(bits=8, form=form), model=model)
    assert torch.equal(gm(*INPUTS), model(*INPUTS))
    assert all(row["exact"] and row["error"] == 0 for row in stages[-1].stats["layers"])
    assert stages[-1].modified == (form == "gather")  # dense: no value changed


@pytest.mark.parametrize(("granularity", "form"), [("layer", "gather"), ("channel", "dense")])
def test_a_codebook_has_at_most_2_to_the_bits_values(granularity: str, form: str) -> None:
    gm, stages = _run(Cluster(bits=3, granularity=granularity, form=form))
    for name in WEIGHTS:
        weight = _weight(gm, name)
        rows = weight.reshape(weight.shape[0], -1) if granularity == "channel" else [weight]
        assert all(len(torch.unique(row)) <= 8 for row in rows)
    stats = stages[-1].stats
    assert stats["clustered"] == 4 and stats["bytes_stored"] < stats["bytes_dense"] / 3


def test_the_gather_form_is_a_lookup_of_a_uint8_index() -> None:
    gm, _ = _run(Cluster(bits=4))
    assert all(p.numel() == 16 for n, p in gm.named_parameters() if n.endswith("_codebook"))
    assert gm.get_buffer("3.weight_index").dtype == torch.uint8
    assert not any(n in dict(gm.named_parameters()) for n in WEIGHTS)
    second = Cluster(bits=4).run(gm, _context(_model()))
    assert not second.modified and len(second.stats["refused"]) == 4
    assert "already done" in second.stats["refused"][0]["reason"]


def test_zero_stays_its_own_cluster_after_sparsify_and_through_recover() -> None:
    gm, stages = _run(
        Sparsify(sparsity=0.7), Cluster(bits=3), get_pass("recover", steps=6, lr=0.05)
    )
    recover = stages[-1].stats
    assert recover["masked"] == 4  # the zero entry of each codebook
    for name in WEIGHTS:
        weight = _weight(gm, name)
        assert float((weight == 0).float().mean()) == pytest.approx(0.7, abs=0.01)
        assert gm.get_parameter(f"{name}_codebook")[0] == 0
        assert len(torch.unique(weight)) <= 8
    assert all(row["bytes_sparse"] is not None for row in stages[2].stats["layers"])


def test_recover_trains_dense_form_centroids_and_keeps_them_shared() -> None:
    gm, stages = _run(
        Sparsify(sparsity=0.5),
        Cluster(bits=2, form="dense"),
        get_pass("recover", steps=8, lr=0.05),
    )
    before = stages[2].stats
    recover = stages[-1].stats
    assert recover["codebooks"] == 4 and recover["improved"]
    for name in WEIGHTS:
        weight = gm.get_parameter(name)
        assert len(torch.unique(weight)) <= 4 and codebook_tensors(gm, name) is not None
        assert torch.equal(weight != 0, gm.meta[MASK_META][name])
    assert before["layers"][0]["clusters"] <= 4
    assert not any(parametrize.is_parametrized(m) for m in gm.modules())


def test_cluster_then_int8_keeps_at_most_2_to_the_bits_values_per_channel() -> None:
    gm, stages = _run(
        Sparsify(sparsity=0.5),
        Cluster(bits=3, form="dense"),
        get_pass("quantize"),
        get_pass("recover", steps=4, lr=0.05),
    )
    assert stages[-1].stats["codebooks"] == 4  # re-derived per channel in the QAT form
    for name in WEIGHTS:
        int8 = gm.get_buffer(f"{name}_int8")
        assert all(len(torch.unique(row)) <= 8 for row in int8.reshape(int8.shape[0], -1))
        assert torch.equal(int8 != 0, gm.meta[MASK_META][name])


def test_int8_refuses_gather_form_layers_with_the_reason() -> None:
    _, stages = _run(Cluster(bits=4), get_pass("quantize"))
    reasons = {row["reason"] for row in stages[-1].stats["refused"]}
    assert reasons == {"weight is not a float parameter or buffer"}


def test_kmeans_inits_and_the_fixed_zero() -> None:
    weight = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    weight[weight.abs() < 0.5] = 0
    for init in ("linear", "density"):
        fit = fit_codebook(weight, 4, init=init)
        assert fit.zero and fit.centroids[0] == 0 and fit.index.dtype == torch.uint8
        assert torch.equal(lookup(fit.centroids, fit.index) == 0, weight == 0)
        assert bool((fit.centroids[1:].diff() > 0).all())  # sorted, distinct
    with pytest.raises(ValueError, match="bits"):
        fit_codebook(weight, 9)


def test_huffman_sizes_match_what_dahuffman_writes() -> None:
    symbols = [0] * 900 + [1] * 60 + [2] * 30 + [3] * 10
    counts = {s: symbols.count(s) for s in set(symbols)}
    assert math.ceil(huffman_bits(counts) / 8) == len(
        HuffmanCodec.from_frequencies(counts).encode(symbols)
    )


def test_sparse_coding_beats_one_bit_a_weight_at_90_percent_zeros() -> None:
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(1, 16, (100_000,), generator=generator, dtype=torch.uint8)
    index[torch.rand(100_000, generator=generator) < 0.9] = 0
    size = code_bytes(index, torch.zeros(16), bits=4, zero=True)
    assert size.bits == 50_000 + 64
    assert size.huffman > 100_000 / 8  # Huffman spends at least a bit a symbol
    assert size.sparse < 0.95 * 100_000 / 8 and size.best[0] == "sparse_huffman"


def test_the_onnx_file_stores_uint8_indices_and_runs_on_onnxruntime(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from graphopt.artifacts import export_onnx

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3)).eval()
    inputs = (torch.randn(1, 3, 8, 8),)
    gm = PassManager([Cluster(bits=4)]).run(trace(model, inputs), inputs).graph_module
    dense = export_onnx(trace(model, inputs), inputs, tmp_path / "dense.onnx")
    coded = export_onnx(gm, inputs, tmp_path / "coded.onnx")
    types = {i.name: i.data_type for i in onnx.load(str(coded)).graph.initializer}
    assert types["2.weight_index"] == onnx.TensorProto.UINT8
    assert coded.stat().st_size < 0.4 * dense.stat().st_size
    session = ort.InferenceSession(str(coded), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: inputs[0].numpy()})
    assert max_rel_diff(gm(*inputs), torch.from_numpy(out)) < 1e-5


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"bits": 1}, r"cluster\.bits"),
        ({"bits": 9}, r"cluster\.bits"),
        ({"granularity": "row"}, r"cluster\.granularity"),
        ({"form": "csr"}, r"cluster\.form"),
        ({"init": "random"}, r"cluster\.init"),
    ],
)
def test_bad_options_are_named(options: dict, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        get_pass("cluster", **options)


def test_a_skip_typo_is_an_error() -> None:
    model = _model()
    with pytest.raises(PassError, match=r"\[cluster\] skip entry 'fc'"):
        Cluster(skip=["fc"]).run(trace(model, INPUTS), _context(model))


def test_the_users_model_is_untouched() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(Sparsify(sparsity=0.5), Cluster(bits=2, form="dense"), get_pass("recover", steps=2))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not hasattr(model, "meta") or CODEBOOK_META not in model.meta


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_models())
def test_cluster_on_random_models(case: tuple) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    candidates = len(find_weights(gm)[0])
    result = PassManager([Cluster(bits=3)]).run(gm, inputs)
    out, stats = result.graph_module, result.stages[-1].stats
    assert stats["clustered"] == candidates
    for row in stats["layers"]:
        assert len(torch.unique(_weight(out, row["weight"]))) <= 8
    assert torch.isfinite(out(*inputs)).all()
