"""Dynamic dimensions beyond the batch (``graphopt.shapes``): declared at capture, kept by
every pass, symbolic in the ONNX export, and run at sizes other than the example's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from graphopt.artifacts import export_onnx, load, save
from graphopt.backends import get_backend
from graphopt.capture import trace
from graphopt.cli import main
from graphopt.errors import CaptureError, PassError, RecipeError
from graphopt.pass_manager import PassManager
from graphopt.passes import Pass, PassContext, PassResult, get_pass
from graphopt.recipe import parse_recipe
from graphopt.runner import compress
from graphopt.shapes import (
    DynamicDim,
    check_declaration,
    declared_shapes,
    parse_dynamic_shapes,
    resized_inputs,
)

SEQ = ({1: {"name": "seq", "max": 64}}, {1: {"name": "seq", "max": 64}})


class TinyBert(nn.Module):
    """HF BERT from a config (random weights): token ids and mask, sequence length dynamic."""

    def __init__(self) -> None:
        super().__init__()
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
        self.bert = BertModel(config)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state


def bert_inputs(length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (2, length), generator=generator)
    return ids, torch.ones(2, length, dtype=torch.long)


def fully_convolutional() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A segmentation-style net: any H×W in, the same H×W of class scores out."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Upsample(scale_factor=2.0),
        nn.Conv2d(32, 5, 1),
    ).eval()
    return model, (torch.randn(1, 3, 16, 16),)


HW = [{2: {"name": "h", "min": 4}, 3: {"name": "w", "min": 4}}]


def test_declaration_forms_agree() -> None:
    inputs = bert_inputs()
    as_list = parse_dynamic_shapes(({1: "seq"}, {1: "seq"}), inputs)
    as_mapping = parse_dynamic_shapes({0: {1: "seq"}, "1": {"1": "seq"}}, inputs)  # TOML keys
    with_dim = parse_dynamic_shapes(({1: torch.export.Dim("seq")}, {-1: DynamicDim("seq")}), inputs)
    assert as_list == as_mapping == with_dim == ({1: DynamicDim("seq")}, {1: DynamicDim("seq")})
    assert parse_dynamic_shapes(None, inputs) is None
    assert parse_dynamic_shapes([None, {}], inputs) is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([{1: "seq"}], "has 1 entr"),
        ({2: {1: "seq"}}, "not an input index"),
        (({5: "seq"}, None), "not a dimension of a rank-2 input"),
        (({1: "2x"}, None), "must be an identifier"),
        (({1: {"name": "seq", "max": 8}}, None), "outside seq's bounds"),
        (({1: {"name": "seq", "lo": 8}}, None), "give {name, min, max}"),
        (({0: "n", 1: "n"}, None), "example sizes differ"),
        (({1: {"name": "s", "min": 4}}, {1: {"name": "s", "min": 8}}), "other bounds"),
        ("seq", "must be a list"),
    ],
)
def test_bad_declarations_are_named(spec: object, message: str) -> None:
    inputs = (torch.zeros(3, 16, dtype=torch.long), torch.zeros(3, 16, dtype=torch.long))
    with pytest.raises(RecipeError, match=message):
        parse_dynamic_shapes(spec, inputs)


def test_size_one_cannot_be_dynamic() -> None:
    with pytest.raises(RecipeError, match="specialises sizes 0 and 1"):
        parse_dynamic_shapes([{1: "seq"}], (torch.zeros(2, 1),))


def test_bert_keeps_its_sequence_dynamic_through_every_pass_and_onnx(tmp_path: Path) -> None:
    model, inputs = TinyBert().eval(), bert_inputs()
    passes = [
        get_pass("prune", target_macs=0.7),
        get_pass("low_rank", ratio=0.5),
        get_pass("quantize", calibration={"source": "example_inputs"}),
    ]
    backend = get_backend("onnxruntime", onnx_path=tmp_path / "bert.onnx")
    run = compress(model, inputs, passes, backends=[backend], dynamic_shapes=SEQ, warmup=1, runs=2)
    gm = run.compressed
    assert declared_shapes(gm) == ({1: DynamicDim("seq", None, 64)},) * 2
    assert all(stage.modified for stage in run.report.stages[1:])
    assert run.report.provenance["inputs"]["dynamic"][0]["name"] == "seq"
    graph = onnx.load(str(tmp_path / "bert.onnx"), load_external_data=False).graph
    assert [i.type.tensor_type.shape.dim[1].dim_param for i in graph.input] == ["seq", "seq"]
    compiled = backend.compile(gm, inputs)
    for length in (5, 40, 64):  # none of them the example's 16
        ids, mask = bert_inputs(length)
        (ort_out,) = compiled.run([ids.numpy(), mask.numpy()])
        with torch.no_grad():
            torch_out = gm(ids, mask).numpy()
        assert ort_out.shape == (2, length, 64)
        assert np.abs(ort_out - torch_out).max() < 1e-3 * max(1.0, np.abs(torch_out).max())
    saved = load(save(gm, inputs, tmp_path / "bert.pt2"))
    ids, mask = bert_inputs(33)
    with torch.no_grad():
        assert torch.allclose(saved(ids, mask), gm(ids, mask), atol=1e-5)


def test_fully_convolutional_model_takes_any_image_size(tmp_path: Path) -> None:
    model, inputs = fully_convolutional()
    passes = [
        get_pass("fold_batchnorm"),
        get_pass("prune", target_macs=0.6),
        get_pass("low_rank", ratio=0.5, method="tucker"),
    ]
    run = compress(model, inputs, passes, dynamic_shapes=HW)
    gm = run.compressed
    assert run.report.stages[2].modified and run.report.stages[3].modified
    path = export_onnx(gm, inputs, tmp_path / "fcn.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for height, width in ((32, 48), (8, 24)):
        x = torch.randn(3, 3, height, width)
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = gm(x).numpy()
        assert out.shape == (3, 5, height, width)
        assert np.abs(out - expected).max() < 1e-4


def test_a_model_that_fixes_a_declared_dimension_is_one_line() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()  # needs 8×8
    with pytest.raises(CaptureError, match="dynamic_shapes: the model") as caught:
        trace(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=[{2: "h"}])
    assert "\n" not in str(caught.value)


def test_a_model_that_bounds_a_dimension_says_which_bound() -> None:
    with pytest.raises(CaptureError, match="seq: max=64"):
        trace(TinyBert().eval(), bert_inputs(), dynamic_shapes=({1: "seq"}, {1: "seq"}))


class StaticReexport(Pass):
    """A broken pass: rebuilds the graph from an export with the example's static shapes."""

    name = "static_reexport"
    exact = True

    def call(self, gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
        rebuilt = torch.export.export(gm, ctx.example_inputs, strict=False).module()
        return PassResult(rebuilt, modified=True)


def test_a_pass_that_fixes_a_declared_dimension_is_named() -> None:
    model, inputs = fully_convolutional()
    inputs = (inputs[0].repeat(2, 1, 1, 1),)
    gm = trace(model, inputs, dynamic_shapes=HW)
    with pytest.raises(PassError, match=r"\[static_reexport\] .* h=32, w=32"):
        PassManager([StaticReexport()]).run(gm, inputs)


def test_resized_inputs_tile_and_cut_along_declared_dimensions() -> None:
    ids, mask = bert_inputs(4)
    declared = parse_dynamic_shapes(({1: "seq"}, {1: "seq"}), (ids, mask))
    longer, longer_mask = resized_inputs(declared, (ids, mask), {"seq": 10})
    assert longer.shape == (2, 10) and torch.equal(longer[:, 4:8], ids)
    shorter, _ = resized_inputs(declared, (ids, mask), {"seq": 3})
    assert torch.equal(shorter, ids[:, :3]) and longer_mask.shape == (2, 10)


def test_recipe_dynamic_key_is_checked_and_recorded(tmp_path: Path) -> None:
    base = {"model": "tests.test_dynamic_shapes:fully_convolutional"}
    recipe = parse_recipe({**base, "dynamic": HW})
    assert recipe.dynamic == HW and recipe.as_run()["dynamic"] == HW
    for bad, message in (
        ({"dynamic": "h"}, "must be a list"),
        ({"dynamic": [{2: {"name": "h", "max": "big"}}]}, "bounds must be integers"),
        ({"dynamic": {"x": {2: "h"}}}, "not an input index"),
    ):
        with pytest.raises(RecipeError, match=message):
            parse_recipe({**base, **bad})
    assert check_declaration(None, where="dynamic") is None


def test_cli_run_with_a_dynamic_recipe_writes_an_onnx_of_any_size(tmp_path: Path) -> None:
    recipe = {
        "model": "tests.test_dynamic_shapes:fully_convolutional",
        "dynamic": {0: {2: {"name": "h", "min": 4}, 3: {"name": "w", "min": 4}}},
        "passes": ["fold_batchnorm", {"prune": {"target_macs": 0.7}}],
        "backends": ["onnxruntime"],
        "benchmark": {"warmup": 1, "runs": 2},
        "output": str(tmp_path / "out"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    assert main(["run", str(path)]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {d["name"] for d in report["provenance"]["inputs"]["dynamic"]} == {"h", "w"}
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["h", "w"]
