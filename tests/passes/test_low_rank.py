"""The low_rank pass: options, refusals, every method end to end (lint, pass manager, ONNX
Runtime), the zoo, rank rules at pass level, and PCA beating weight SVD on output error."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from graphopt.analysis import analyze
from graphopt.backends import get_backend
from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import relative_diff
from graphopt.capture import trace
from graphopt.errors import PassError, RecipeError
from graphopt.lowrank.ranks import rank_for_energy
from graphopt.pass_manager import PassManager, relative_error
from graphopt.passes.base import PassContext, get_pass
from graphopt.passes.low_rank import LowRank
from graphopt.zoo import get_model
from tests.helpers import aten, count_op, max_rel_diff

ORT_TOLERANCE = 1e-4


class Net(nn.Module):
    """Every layer kind the pass meets: k×k (strided, padded, dilated), 1×1, depthwise, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, padding=1)
        self.body = nn.Conv2d(24, 48, 3, stride=2, padding=2, dilation=2)
        self.expand = nn.Conv2d(48, 64, 1, bias=False)
        self.depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.wide = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu_(self.stem(x))
        x = torch.relu_(self.body(x))
        x = self.depthwise(self.expand(x))
        x = torch.relu(self.wide(x)).mean((2, 3))
        return self.head(torch.relu(self.fc(x)))


def net_trace(seed: int = 0):
    torch.manual_seed(seed)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    return model, trace(model, x), x


def run(gm, x, *passes, calibration=None):
    ctx = PassContext((x,), {"calibration": calibration} if calibration is not None else {})
    return PassManager(list(passes)).run(gm, x, context=ctx)


def ort_rel_diff(gm, inputs: tuple[torch.Tensor, ...]) -> float:
    compiled = get_backend("onnxruntime").compile(gm, inputs)
    with torch.no_grad():
        reference = flat_torch_outputs(gm(*inputs))
    return relative_diff(reference, compiled.run(to_numpy_inputs(inputs)))


# ---- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"method": "qr", "ratio": 0.5}, "method"),
        ({"ratio": 0.0}, "ratio"),
        ({"ratio": 1.5}, "ratio"),
        ({"ratio": True}, "ratio"),
        ({"energy": 0.0}, "energy"),
        ({"energy": 1.01}, "energy"),
        ({"rank": 0}, "rank"),
        ({"rank": -3}, "rank"),
        ({"rank": "auto"}, "rank"),
        ({"ratio": 0.5, "rank": 4}, "at most one"),
        ({}, "give one of"),
        ({"ranks": {"fc": 0}}, "ranks"),
        ({"ranks": {"fc": (2, 3, 4)}}, "ranks"),
        ({"ratio": 0.5, "round_to": 0}, "round_to"),
        ({"ratio": 0.5, "skip": "fc"}, "skip"),
        ({"ratio": 0.5, "min_macs_saving": 1.0}, "min_macs_saving"),
        ({"method": "cp", "energy": 0.9}, "energy"),
        ({"method": "pca", "rank": "vbmf"}, "vbmf"),
    ],
)
def test_bad_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        LowRank(**options)


def test_registered_under_its_name_with_recipe_errors() -> None:
    assert isinstance(get_pass("low_rank", method="tucker", ratio=0.5), LowRank)
    with pytest.raises(RecipeError, match="energy"):
        get_pass("low_rank", energy=2)


def test_pca_without_calibration_data_is_a_pass_error() -> None:
    _, gm, _ = net_trace()
    with pytest.raises(PassError, match="calibration"):
        LowRank(method="pca", ratio=0.5).run(gm, PassContext(()))
    with pytest.raises(PassError, match="calibration"):
        LowRank(method="pca", ratio=0.5).run(gm, PassContext((), {"calibration": []}))
    with pytest.raises(PassError, match="calibration"):
        LowRank(method="pca", ratio=0.5).run(gm, PassContext((), {"calibration": [3]}))


def test_unknown_layer_names_are_pass_errors() -> None:
    _, gm, x = net_trace()
    with pytest.raises(PassError, match=r"skip entry 'fc2'.*named like"):
        LowRank(ratio=0.5, skip=["fc2"]).run(gm, PassContext((x,)))
    with pytest.raises(PassError, match="ranks entry 'f'"):
        LowRank(ranks={"f": 3}).run(gm, PassContext((x,)))
    with pytest.raises(PassError, match=r"ranks\['fc'\].*only applies to tucker"):
        LowRank(ranks={"fc": (3, 4)}).run(gm, PassContext((x,)))


# ---- every method end to end ------------------------------------------------------------------
KXK, POINTWISE = ("stem", "body", "wide"), ("expand", "fc", "head")
METHODS = ("svd", "tucker", "cp", "spatial_svd", "pca")


def expected_methods(method: str) -> dict[str, str]:
    """At ratio 0.25 every layer but the depthwise one shrinks; 1×1 and linear fall back."""
    pointwise = method if method in ("svd", "pca") else "svd"
    return {**dict.fromkeys(KXK, method), **dict.fromkeys(POINTWISE, pointwise)}


@pytest.mark.parametrize("method", METHODS)
def test_each_method_decomposes_checks_and_is_idempotent(method: str) -> None:
    model, gm, x = net_trace()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = [(torch.randn(4, 3, 16, 16),) for _ in range(4)]
    result = run(gm, x, LowRank(method=method, ratio=0.25), calibration=calibration)
    stage, out = result.stages[-1], result.graph_module
    done = {d["layer"]: d["method"] for d in stage.stats["layers"]}
    assert done == expected_methods(method)
    assert stage.modified and stage.stats["decomposed"] == len(done)
    (refusal,) = stage.stats["refused"]
    assert refusal["node"] == "depthwise" and "no channel rank to cut" in refusal["reason"]
    assert 0 < stage.relative_error < 1
    original = analyze(gm)
    assert original.macs - stage.macs == stage.stats["macs_saved"] > 0
    assert original.params - stage.params == stage.stats["params_saved"] > 0
    for entry in stage.stats["layers"]:
        assert entry["macs_after"] < entry["macs_before"]
        assert entry["params_after"] < entry["params_before"]
        assert 0 <= entry["error"] < 1
        assert entry["error_of"] == ("output" if method == "pca" else "weight")
    assert count_op(out, aten.conv2d) + count_op(out, aten.linear) > count_op(gm, aten.conv2d) + 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = run(out, x, LowRank(method=method, ratio=0.25), calibration=calibration)
    assert again.stages[-1].modified is False
    assert again.stages[-1].relative_error == 0.0


def test_all_methods_chained_export_to_onnx_runtime() -> None:
    """One model holding every factor structure (1×1, k×1/1×k, depthwise, linear) through ORT."""
    _, gm, x = net_trace()
    result = run(
        gm,
        x,
        LowRank(method="cp", ratio=0.25, skip=["body", "wide", "expand", "fc", "head"]),
        LowRank(method="spatial_svd", ratio=0.25, skip=["stem", "wide", "expand", "fc", "head"]),
        LowRank(method="tucker", ratio=0.25, skip=["stem", "body", "expand", "fc", "head"]),
        LowRank(method="pca", ratio=0.25, skip=["stem", "body", "wide", "fc", "head"]),
        LowRank(method="svd", ratio=0.25, skip=["stem", "body", "wide", "expand", "head"]),
    )
    assert [s.stats["decomposed"] for s in result.stages[1:]] == [1, 1, 1, 1, 1]
    assert ort_rel_diff(result.graph_module, (x,)) <= ORT_TOLERANCE


def test_decomposed_model_keeps_a_dynamic_batch() -> None:
    model, gm, x = net_trace()
    out = run(gm, x, LowRank(method="tucker", ratio=0.5)).graph_module
    with torch.no_grad():
        five = torch.randn(5, 3, 16, 16)
        assert out(five).shape == (5, 10)
        assert max_rel_diff(model(five), out(five)) < 1


# ---- rank rules at pass level ----------------------------------------------------------------
def layers_by_name(result) -> dict[str, dict]:
    return {d["layer"]: d for d in result.stages[-1].stats["layers"]}


def test_energy_rank_matches_the_spectrum() -> None:
    model, gm, x = net_trace()
    done = layers_by_name(run(gm, x, LowRank(method="svd", energy=0.6)))
    weight = model.fc.weight.detach().double()
    expected = rank_for_energy(torch.linalg.svdvals(weight), 0.6)
    assert done["fc"]["rank"] == expected < 48
    assert done["fc"]["error"] <= 0.4**0.5 + 1e-9  # kept ≥ 60 % of ‖W‖²: error ≤ sqrt(0.4)


def test_pca_energy_keeps_that_fraction_of_output_variance() -> None:
    _, gm, x = net_trace()
    calibration = [(torch.randn(8, 3, 16, 16),) for _ in range(4)]
    result = run(gm, x, LowRank(method="pca", energy=0.9), calibration=calibration)
    done = layers_by_name(result)
    assert {"body", "wide"} <= set(done)
    for entry in done.values():  # error² = discarded variance / E‖y‖² ≤ 1 − energy
        assert entry["error_of"] == "output" and entry["error"] <= 0.1**0.5 + 1e-9
        assert entry["rank"] < entry["full_rank"]


def test_explicit_ranks_round_to_and_min_macs_saving() -> None:
    _, gm, x = net_trace()
    result = run(
        gm,
        x,
        LowRank(method="tucker", ratio=0.3, ranks={"wide": (8, 16)}, round_to=8, skip=["stem"]),
    )
    done = layers_by_name(result)
    assert done["wide"]["rank"] == [8, 16]  # explicit ranks are taken as given
    assert done["body"]["rank"] == [16, 8]  # ceil(0.3 · 48) = 15 → 16, ceil(0.3 · 24) = 8
    assert done["fc"]["rank"] == 16  # ceil(0.3 · 48) = 15 → 16
    refused = {r["node"]: r["reason"] for r in result.stages[-1].stats["refused"]}
    assert refused["stem"] == "in skip"
    strict = run(gm, x, LowRank(method="svd", rank=16, min_macs_saving=0.5))
    refused = {r["node"]: r["reason"] for r in strict.stages[-1].stats["refused"]}
    assert "below min_macs_saving=0.5" in refused["fc"]  # 64·48 → 16·(64 + 48): 42 % saved
    assert all(
        1 - d["macs_after"] / d["macs_before"] >= 0.5 for d in layers_by_name(strict).values()
    )


def test_only_listed_layers_without_a_global_rule() -> None:
    _, gm, x = net_trace()
    result = run(gm, x, LowRank(method="svd", ranks={"fc": 8}))
    assert list(layers_by_name(result)) == ["fc"]
    refused = {r["node"]: r["reason"] for r in result.stages[-1].stats["refused"]}
    assert "not in ranks" in refused["wide"]


def test_vbmf_finds_a_planted_tucker_rank() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1)).eval()
    gen = torch.Generator().manual_seed(1)
    core = torch.randn(6, 5, 3, 3, generator=gen)
    u_out, u_in = torch.randn(48, 6, generator=gen), torch.randn(32, 5, generator=gen)
    planted = torch.einsum("srhw,os,ir->oihw", core, u_out, u_in)
    with torch.no_grad():
        model[0].weight.copy_(planted + 0.01 * torch.randn(planted.shape, generator=gen))
    x = torch.randn(2, 32, 8, 8)
    result = run(trace(model, x), x, LowRank(method="tucker", rank="vbmf"))
    (entry,) = result.stages[-1].stats["layers"]
    assert entry["rank"] == [6, 5]
    assert result.stages[-1].relative_error < 0.05
    noise = run(trace(nn.Conv2d(32, 48, 3).eval(), x), x, LowRank(method="tucker", rank="vbmf"))
    (refusal,) = noise.stages[-1].stats["refused"]
    assert "VBMF finds no component" in refusal["reason"]


# ---- PCA against weight SVD ------------------------------------------------------------------
def correlated_images(seed: int, n: int, basis: torch.Tensor) -> tuple[torch.Tensor]:
    """Images from a 6-D subspace plus 5 % noise: calibration and held-out share the law."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randn(n, basis.shape[0], generator=gen)
    noise = 0.05 * torch.randn(n, 3 * 16 * 16, generator=gen)
    return ((codes @ basis + noise).reshape(n, 3, 16, 16),)


def test_pca_beats_svd_at_equal_macs_on_held_out_data() -> None:
    _, gm, x = net_trace()
    basis = torch.randn(6, 3 * 16 * 16, generator=torch.Generator().manual_seed(9))
    calibration = [correlated_images(seed, 16, basis) for seed in range(4)]
    held_out = correlated_images(100, 32, basis)
    skip = ["head", "fc"]  # 64 calibration rows cannot fix their directions; keep SVD's equal
    errors, macs = {}, {}
    for method in ("svd", "pca"):
        result = run(gm, x, LowRank(method=method, ratio=0.25, skip=skip), calibration=calibration)
        out = result.graph_module
        with torch.no_grad():
            errors[method] = relative_error([gm(*held_out)], [out(*held_out)])
        macs[method] = result.stages[-1].macs
        assert result.stages[-1].stats["decomposed"] == 4
    assert macs["pca"] == macs["svd"]
    assert errors["pca"] < errors["svd"] / 2, errors


def test_pca_beats_svd_on_the_transformer() -> None:
    model, tokens = get_model("transformer", input_shape=(4, 16))
    gm = trace(model, tokens)
    calibration = [get_model("transformer", input_shape=(4, 16), seed=s)[1] for s in range(1, 9)]
    held_out = get_model("transformer", input_shape=(4, 16), seed=100)[1]
    errors, macs = {}, {}
    for method in ("pca", "svd"):
        pass_ = LowRank(method=method, ratio=0.25, skip=["pooler", "classifier"])
        result = run(gm, tokens[0], pass_, calibration=calibration)
        with torch.no_grad():
            errors[method] = relative_error([gm(*held_out)], [result.graph_module(*held_out)])
        macs[method] = result.stages[-1].macs
        layers = layers_by_name(result)
        assert {"layers.0.attn.q_proj", "layers.1.attn.out_proj", "layers.1.ffn.2"} <= set(layers)
    assert macs["pca"] == macs["svd"] < analyze(gm).macs / 2
    assert errors["pca"] < errors["svd"], errors


# ---- zoo -----------------------------------------------------------------------------------------
ZOO = {
    "resnet18": ((1, 3, 32, 32), {}, {"method": "tucker", "ratio": 0.5, "round_to": 8}),
    "resnet50": ((1, 3, 32, 32), {}, {"method": "svd", "ratio": 0.5}),
    "vgg11_bn": (
        (1, 3, 32, 32),
        {"hidden_features": 64, "num_classes": 10},
        {"method": "spatial_svd", "ratio": 0.25},
    ),
    "mobilenet_v2": ((1, 3, 32, 32), {}, {"method": "cp", "ratio": 0.5}),
    "transformer": ((1, 16), {}, {"method": "svd", "ratio": 0.25}),
}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_models_decompose(name: str) -> None:
    shape, build, options = ZOO[name]
    model, inputs = get_model(name, input_shape=shape, **build)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        gm = trace(model, inputs)
        original = copy.deepcopy(gm)
    result = PassManager([LowRank(**options)]).run(gm, inputs)
    stage, out = result.stages[-1], result.graph_module
    assert stage.modified and stage.macs < result.stages[0].macs
    assert stage.params < result.stages[0].params
    with torch.no_grad():
        assert torch.isfinite(out(*inputs)).all()
        assert out(*inputs).shape == original(*inputs).shape
    refused = {r["node"]: r["reason"] for r in stage.stats["refused"]}
    methods = {d["layer"]: d["method"] for d in stage.stats["layers"]}
    if name == "mobilenet_v2":  # depthwise refused, 1×1 convs fall back to SVD, stem gets CP
        depthwise = [k for k, v in refused.items() if "depthwise" in v]
        assert len(depthwise) == 17
        assert methods["features.0.0"] == "cp"
        assert methods["features.1.conv.1"] == "svd"
    if name == "resnet50":  # square 1×1 convs at half rank would not shrink: refused, with numbers
        assert "MACs 262144 → 262144" in refused["layer1.0.conv1"]
        assert "would not reduce both" in refused["layer1.0.conv1"]
        assert methods["layer1.0.conv2"] == "svd"  # 3×3: channel SVD does shrink
        assert methods["layer4.2.conv3"] == "svd" and methods["fc"] == "svd"
    if name == "resnet18":
        assert methods["layer4.1.conv2"] == "tucker" and methods["fc"] == "svd"
        for entry in stage.stats["layers"]:
            ranks, full = _ranks(entry["rank"]), _ranks(entry["full_rank"])
            assert all(r % 8 == 0 or r == f for r, f in zip(ranks, full, strict=True)), entry
    if name == "transformer":  # attention projections and FFN linears
        for path in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert methods[f"layers.0.attn.{path}"] == "svd"
        assert methods["layers.1.ffn.0"] == methods["layers.1.ffn.2"] == "svd"
    if name in ("resnet18", "transformer"):
        assert ort_rel_diff(out, inputs) <= ORT_TOLERANCE


def _ranks(rank: int | list[int]) -> list[int]:
    return rank if isinstance(rank, list) else [rank]
