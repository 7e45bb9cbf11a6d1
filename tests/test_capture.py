"""graphopt.capture.trace: copying, naming, metadata, gradients, errors and HF models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.fx import GraphModule

from graphopt.capture import as_input_tuple, trace
from graphopt.errors import CaptureError, GraphoptError
from graphopt.zoo import get_model

aten = torch.ops.aten


class SmallNet(nn.Module):
    """Conv → BN → ReLU → pool → Linear, with a nested submodule for naming checks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x).mean(dim=(2, 3))
        return self.head(x)


class Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent: export cannot capture this branch
            return x * 2
        return x


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.blocks = nn.Sequential(nn.ReLU(), Gate())

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.proj(x))


@pytest.fixture
def small() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return SmallNet().eval(), torch.randn(2, 3, 8, 8)


def test_trace_deep_copies_the_model(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gm = trace(model, (x,))
    user_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not user_ptrs & {t.data_ptr() for t in gm.state_dict().values()}
    with torch.no_grad():
        for param in gm.parameters():
            param.add_(1.0)
        gm.get_buffer("stem.1.running_mean").add_(1.0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_get_attr_names_are_the_original_names(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    gm = trace(model, (x,))
    targets = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert set(dict(model.named_parameters())) <= targets
    assert set(dict(model.named_buffers())) <= targets
    assert {"stem.0.weight", "stem.1.running_var", "head.bias"} <= targets


def test_node_meta_has_val_and_module_stack(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    gm = trace(model, (x,))
    op_nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert op_nodes
    for node in op_nodes:
        assert "val" in node.meta and "nn_module_stack" in node.meta, node.format_node()
    conv = next(n for n in op_nodes if n.target == aten.conv2d.default)
    assert tuple(conv.meta["val"].shape[1:]) == (8, 8, 8)
    paths = [path for path, _type in conv.meta["nn_module_stack"].values()]
    assert paths[-1] == "stem.0"


def test_gradients_flow_through_the_traced_module(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    gm = trace(model, (x,))
    loss = gm(x).square().mean()
    loss.backward()
    params = dict(gm.named_parameters())
    assert params
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert params["stem.0.weight"].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_dynamic_batch_by_default_and_static_when_asked(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    x1 = x[:1]
    dynamic = trace(model, (x1,))
    x5 = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x5), model(x5), rtol=1e-5, atol=1e-6)
    static = trace(model, (x,), dynamic_batch=False)
    assert isinstance(_input_batch(dynamic), torch.SymInt)
    assert _input_batch(static) == 2


def _input_batch(gm: GraphModule) -> object:
    placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return placeholder.meta["val"].shape[0]


def test_data_dependent_control_flow_names_module_and_line() -> None:
    with pytest.raises(CaptureError) as info:
        trace(Branchy().eval(), (torch.randn(1, 4),))
    message = str(info.value)
    assert "blocks.1 (Gate)" in message
    assert "if x.sum() > 0" in message
    assert "test_capture.py" in message
    assert "torch.where" in message or "torch.cond" in message


@pytest.mark.parametrize("bad", ["not a tensor", [torch.randn(1, 4), 3], 1.5, None])
def test_bad_example_inputs_raise_capture_error(bad: object) -> None:
    with pytest.raises(CaptureError, match="example_inputs must be"):
        trace(Branchy(), bad)  # type: ignore[arg-type]


def test_non_module_raises_capture_error() -> None:
    with pytest.raises(CaptureError, match=r"torch\.nn\.Module"):
        trace(lambda x: x, (torch.randn(1),))  # type: ignore[arg-type]
    assert issubclass(CaptureError, GraphoptError)


def test_as_input_tuple_normalises() -> None:
    t = torch.randn(2)
    assert as_input_tuple(t) == (t,)
    assert as_input_tuple([t, t]) == (t, t)


def test_traced_module_remembers_inputs_and_source(small: tuple[nn.Module, Tensor]) -> None:
    model, x = small
    gm = trace(model, x[:1])
    (stored,) = gm.meta["graphopt_example_inputs"]
    assert stored.shape[0] == 2  # batch 1 is repeated so export keeps the batch dim symbolic
    assert gm.meta["graphopt_source_class"] == "SmallNet"


def test_zoo_transformer_captures_sdpa() -> None:
    model, (tokens,) = get_model("transformer", input_shape=(2, 8))
    gm = trace(model, (tokens,))
    targets = [n.target for n in gm.graph.nodes]
    assert targets.count(aten.scaled_dot_product_attention.default) == 2
    with torch.no_grad():
        torch.testing.assert_close(gm(tokens), model(tokens), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- HF transformers


class LastHiddenState(nn.Module):
    """Return only ``last_hidden_state``, so the output is one tensor whatever HF returns."""

    def __init__(self, model: nn.Module, input_name: str) -> None:
        super().__init__()
        self.model = model
        self.input_name = input_name

    def forward(self, x: Tensor) -> Tensor:
        return self.model(**{self.input_name: x}).last_hidden_state


def _hf_model(name: str) -> tuple[nn.Module, Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tokens = torch.randint(0, 500, (1, 16))
    if name == "bert":
        config = transformers.BertConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            vocab_size=500,
        )
        return LastHiddenState(transformers.BertModel(config), "input_ids"), tokens
    if name == "gpt2":
        config = transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=500,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return LastHiddenState(transformers.GPT2Model(config), "input_ids"), tokens
    if name == "distilbert":
        config = transformers.DistilBertConfig(
            dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=500
        )
        return LastHiddenState(transformers.DistilBertModel(config), "input_ids"), tokens
    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=32,
        patch_size=8,
    )
    return LastHiddenState(transformers.ViTModel(config), "pixel_values"), torch.randn(1, 3, 32, 32)


@pytest.mark.parametrize("name", ["bert", "gpt2", "distilbert", "vit"])
def test_hf_models_from_config_capture_and_match(name: str) -> None:
    model, x = _hf_model(name)
    model.eval()
    gm = trace(model, (x,))
    assert isinstance(gm, GraphModule)
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert aten.scaled_dot_product_attention.default in targets
    assert aten.layer_norm.default in targets
    batch3 = torch.cat([x, x.flip(-1), x.roll(1, -1)])
    with torch.no_grad():
        for inputs in (x, batch3):
            expected = model(inputs)
            torch.testing.assert_close(gm(inputs), expected, rtol=1e-5, atol=1e-5)
