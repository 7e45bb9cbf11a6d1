"""ONNX Runtime backend: export of traced (and rewritten) graphs, numerics, dynamic batch, errors.

Each export costs about a second, so the three architectures are compiled once per module.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from torch import nn

from graphopt.backends.base import flat_torch_outputs, to_numpy_inputs
from graphopt.backends.compare import relative_diff
from graphopt.backends.onnxruntime import OnnxRuntimeBackend
from graphopt.capture import trace
from graphopt.errors import BackendError, BackendUnavailableError, RecipeError
from tests.helpers import randomize_batchnorm
from tests.strategies import random_models

TOLERANCE = 1e-4  # relative: max |eager - ort| / max |eager|


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class TinyTransformer(nn.Module):
    """Embedding → one pre-LN block with SDPA and a GELU MLP → two outputs (tuple)."""

    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(ids)
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(dim, dim=-1)
        q, k, v = (t.reshape(batch, seq, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(batch, seq, dim))
        x = x + self.mlp(self.ln2(x))
        return self.head(x), x.mean(dim=1)


def _make(name: str) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if name == "cnn":
        return randomize_batchnorm(SmallCNN()).eval(), (torch.randn(2, 3, 16, 16),)
    if name == "residual":
        return randomize_batchnorm(ResidualBlock()).eval(), (torch.randn(1, 8, 12, 12),)
    return TinyTransformer().eval(), (torch.randint(0, 50, (2, 12)),)


def _batch(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    """The first sample repeated ``n`` times, perturbed so rows differ (ids stay valid)."""
    out = []
    for t in inputs:
        rep = t[:1].repeat(n, *([1] * (t.dim() - 1)))
        out.append(rep.flip(-1) if not t.is_floating_point() else rep + 0.1 * torch.randn_like(rep))
    return tuple(out)


@pytest.fixture(scope="module")
def compiled() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...], object]]:
    cases = {}
    for name in ("cnn", "residual", "transformer"):
        model, inputs = _make(name)
        gm = trace(model, inputs)
        cases[name] = (gm, inputs, OnnxRuntimeBackend().compile(gm, inputs))
    return cases


def _check_matches_eager(model: nn.Module, compiled_model: object, inputs: tuple) -> float:
    with torch.inference_mode():
        reference = flat_torch_outputs(model(*inputs))
    actual = compiled_model.run(to_numpy_inputs(inputs))
    assert [a.shape for a in actual] == [r.shape for r in reference]
    return relative_diff(reference, actual)


@pytest.mark.parametrize("name", ["cnn", "residual", "transformer"])
def test_outputs_match_eager(compiled: dict, name: str) -> None:
    gm, inputs, ort_model = compiled[name]
    assert _check_matches_eager(gm, ort_model, inputs) <= TOLERANCE


@pytest.mark.parametrize("name", ["cnn", "residual", "transformer"])
@pytest.mark.parametrize("batch", [1, 5])
def test_other_batch_sizes_run(compiled: dict, name: str, batch: int) -> None:
    gm, inputs, ort_model = compiled[name]
    assert ort_model.info["dynamic_batch"] is True
    assert _check_matches_eager(gm, ort_model, _batch(inputs, batch)) <= TOLERANCE


@pytest.mark.parametrize("name", ["cnn", "transformer"])
def test_exported_file_is_valid_onnx(compiled: dict, name: str) -> None:
    _, _, ort_model = compiled[name]
    path = Path(ort_model.info["onnx_path"])
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    default_domain = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain and default_domain[0] >= 17
    first_dims = [i.type.tensor_type.shape.dim[0] for i in proto.graph.input]
    assert all(d.HasField("dim_param") for d in first_dims)


def test_info_describes_the_export(compiled: dict) -> None:
    _, _, ort_model = compiled["transformer"]
    info = ort_model.info
    assert ort_model.backend == "onnxruntime"
    assert info["opset"] == 18
    assert info["exporter"] == "torch.onnx.export(dynamo=True)"
    assert info["model"] == "GraphModule(TinyTransformer)"
    assert isinstance(info["ort_optimized_nodes"], int) and info["ort_optimized_nodes"] > 0
    assert sum(info["ort_op_counts"].values()) == info["ort_optimized_nodes"]
    assert info["allow_spinning"] is False


def test_temporary_file_lives_as_long_as_the_compiled_model() -> None:
    model, inputs = _make("residual")
    ort_model = OnnxRuntimeBackend().compile(model, inputs)
    path = Path(ort_model.info["onnx_path"])
    assert path.exists()
    del ort_model
    gc.collect()
    assert not path.exists()


def test_explicit_onnx_path_and_options(tmp_path: Path) -> None:
    model, inputs = _make("cnn")
    target = tmp_path / "sub" / "cnn.onnx"
    backend = OnnxRuntimeBackend(
        opset=20, intra_op_threads=1, optimization="basic", onnx_path=target
    )
    ort_model = backend.compile(model, inputs)
    assert ort_model.info["onnx_path"] == str(target)
    assert target.exists()
    assert ort_model.info["opset"] == 20
    assert ort_model.info["intra_op_threads"] == 1
    assert onnx.load(str(target)).opset_import[0].version == 20
    assert _check_matches_eager(model, ort_model, inputs) <= TOLERANCE


def test_reexport_after_a_pass_changed_shapes() -> None:
    """Prune the CNN's conv to 8 channels inside the traced graph, as a pruning pass would."""
    model, inputs = _make("cnn")
    gm = trace(model, inputs)
    keep = torch.arange(0, 16, 2)
    with torch.no_grad():
        gm.conv.weight = nn.Parameter(gm.conv.weight[keep].clone())
        gm.conv.bias = nn.Parameter(gm.conv.bias[keep].clone())
        for attr in ("weight", "bias"):
            setattr(gm.bn, attr, nn.Parameter(getattr(gm.bn, attr)[keep].clone()))
        for attr in ("running_mean", "running_var"):
            gm.bn.register_buffer(attr, getattr(gm.bn, attr)[keep].clone())
        fc = gm.fc.weight.reshape(10, 16, 64)[:, keep].reshape(10, 8 * 64)
        gm.fc.weight = nn.Parameter(fc.clone())
    assert gm(*inputs).shape == (2, 10)
    ort_model = OnnxRuntimeBackend().compile(gm, inputs)
    assert ort_model.info["dynamic_batch"] is True
    assert _check_matches_eager(gm, ort_model, inputs) <= TOLERANCE
    assert _check_matches_eager(gm, ort_model, _batch(inputs, 3)) <= TOLERANCE


def test_static_graph_falls_back_to_static_batch_with_a_note() -> None:
    model, inputs = _make("residual")
    gm = trace(model, inputs, dynamic_batch=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ort_model = OnnxRuntimeBackend().compile(gm, inputs)
    assert ort_model.info["dynamic_batch"] is False
    assert "static" in ort_model.info["dynamic_batch_note"]
    assert any("static batch" in str(w.message) for w in caught)
    assert _check_matches_eager(gm, ort_model, inputs) <= TOLERANCE


@torch.library.custom_op("graphopt_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class UsesCustomOp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _twice(x) + 1


def test_export_failure_names_model_node_and_op() -> None:
    inputs = (torch.randn(2, 4),)
    gm = trace(UsesCustomOp(), inputs)
    with pytest.raises(BackendError) as info:
        OnnxRuntimeBackend().compile(gm, inputs)
    message = str(info.value)
    assert "\n" not in message
    assert "GraphModule(UsesCustomOp)" in message
    assert "graphopt_test.twice" in message
    assert "How to proceed" in message


def test_wrong_input_count_is_a_backend_error(compiled: dict) -> None:
    _, inputs, ort_model = compiled["cnn"]
    arrays = to_numpy_inputs(inputs)
    with pytest.raises(BackendError, match="takes 1 inputs"):
        ort_model.run(arrays + arrays)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"opset": 16}, "opset"),
        ({"opset": True}, "opset"),
        ({"intra_op_threads": 0}, "intra_op_threads"),
        ({"optimization": "max"}, "optimization"),
    ],
)
def test_invalid_options_name_the_option(options: dict, option: str) -> None:
    with pytest.raises(RecipeError, match=option):
        OnnxRuntimeBackend(**options)


def test_missing_runtime_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "onnxruntime" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    model, inputs = _make("residual")
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime"):
        OnnxRuntimeBackend().compile(model, inputs)


def test_importing_graphopt_does_not_import_onnxruntime() -> None:
    code = (
        "import sys, graphopt, graphopt.backends, graphopt.backends.onnxruntime, "
        "graphopt.backends.compare; print('onnxruntime' in sys.modules, 'tvm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@settings(
    max_examples=4,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_models(max_layers=5))
def test_random_models_match_eager(case: tuple[nn.Module, tuple[torch.Tensor, ...]]) -> None:
    model, inputs = case
    gm = trace(model, inputs)
    ort_model = OnnxRuntimeBackend().compile(gm, inputs)
    assert _check_matches_eager(gm, ort_model, inputs) <= TOLERANCE
    if ort_model.info["dynamic_batch"]:
        assert _check_matches_eager(gm, ort_model, _batch(inputs, 3)) <= TOLERANCE
    assert np.isfinite(ort_model.info["ort_optimized_nodes"])


def test_exported_file_has_no_exporter_debug_metadata(compiled: dict) -> None:
    """Stack traces (with the machine's paths) and the other debugging entries are stripped;
    the module path of each node stays (``graphopt.backends.onnx_cleanup``)."""
    from graphopt.backends.onnx_cleanup import DEBUG_METADATA_KEYS

    _, _, ort_model = compiled["transformer"]
    graph = onnx.load(ort_model.info["onnx_path"]).graph
    keys = {p.key for node in graph.node for p in node.metadata_props}
    assert not keys & DEBUG_METADATA_KEYS
    assert "pkg.torch.onnx.name_scopes" in keys
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    produced |= {i.name for i in graph.initializer}
    assert all(info.name in produced for info in graph.value_info)


def test_skip_layer_norm_fusion_is_off_by_default_and_can_be_restored() -> None:
    """ORT 1.32's CPU SkipLayerNormalization measured 7-8x slower than Add + LayerNormalization
    (module docstring of ``graphopt.backends.onnxruntime``): off by default, same outputs."""
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    inputs = (torch.randn(2, 12, 32),)  # post-LN: LayerNorm(x + block(x)), BERT's residual
    gm = trace(model, inputs)
    ours = OnnxRuntimeBackend(intra_op_threads=1).compile(gm, inputs)
    theirs = OnnxRuntimeBackend(intra_op_threads=1, disabled_optimizers=[]).compile(gm, inputs)
    assert "SkipLayerNormalization" not in ours.info["ort_op_counts"]
    assert "SkipLayerNormalization" in theirs.info["ort_op_counts"]
    assert ours.info["disabled_optimizers"] == ["SkipLayerNormFusion"]
    assert _check_matches_eager(gm, ours, inputs) <= TOLERANCE
    assert _check_matches_eager(gm, theirs, inputs) <= TOLERANCE


def test_cleanup_reaches_subgraphs_and_drops_stale_shapes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from graphopt.backends.onnx_cleanup import clean_exported_file

    def tagged(node: onnx.NodeProto) -> onnx.NodeProto:
        for key in ("pkg.torch.onnx.stack_trace", "pkg.torch.onnx.name_scopes"):
            node.metadata_props.add(key=key, value="x")
        return node

    branch = helper.make_graph(
        [tagged(helper.make_node("Identity", ["x"], ["b"]))],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        [tagged(helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch))],
        "g",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        value_info=[helper.make_tensor_value_info("gone", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert clean_exported_file(path) == 4  # 3 stack traces (node, two branches) + 1 shape
    cleaned = onnx.load(str(path)).graph
    assert not cleaned.value_info
    node_keys = [p.key for p in cleaned.node[0].metadata_props]
    branch_keys = [p.key for p in cleaned.node[0].attribute[0].g.node[0].metadata_props]
    assert node_keys == branch_keys == ["pkg.torch.onnx.name_scopes"]
    assert clean_exported_file(path) == 0
