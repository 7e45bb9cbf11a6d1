"""Third-party architectures, built offline from small random-initialised configurations.

A registry of models graphopt did not write: HF transformers across vision, text and audio,
and pure-PyTorch packages from PyPI (MONAI, EfficientNet-PyTorch, pytorchcv, MLP-Mixer). Each
is the real model code at a toy size (a few layers, widths of 16-64, 32×32 images, 16
tokens), so the whole pipeline runs in seconds on a CPU while every op family of the full
model is still there: window attention and its rolls and pads (Swin), relative position
biases (BEiT, DeBERTa, T5), rotary embeddings and grouped-query attention (Llama, Mistral,
Qwen2, Phi), Conv1D and tied embeddings (GPT-2), weight-normed convs (Wav2Vec2), grouped and
transposed convs, InstanceNorm and PReLU (MONAI's U-Nets), channel shuffles (ShuffleNetV2).

Nothing is downloaded: every model is built from a config and seeded. A builder imports its
package lazily, so the registry imports without any of them; ``Architecture.available`` says
whether the package is installed (tests skip the entries that are not). ``fast`` entries are
the ones the test suite runs (``tests/coverage/test_thirdparty_pipeline.py``); the others run
in ``benchmarks/coverage.py`` only. Used by both, hence no pytest import here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["ARCHITECTURES", "Architecture", "TensorOutput", "get"]

Family = Literal["vision", "text", "audio"]
Built = tuple[nn.Module, tuple[Tensor, ...]]


@dataclass(frozen=True)
class Architecture:
    """One registry entry: how to build the model and what to expect of it.

    ``source`` is the PyPI package and ``module`` its import name; ``build`` returns
    ``(model.eval(), example_inputs)``. ``unmodified`` names the pipeline stages expected to
    change nothing (``prune``, ``low_rank``), and ``note`` says why.
    """

    name: str
    family: Family
    source: str
    module: str
    build: Callable[[], Built]
    fast: bool = False
    unmodified: tuple[str, ...] = ()
    note: str = ""

    def available(self) -> bool:
        """True when the package the model comes from is installed."""
        return importlib.util.find_spec(self.module) is not None


class TensorOutput(nn.Module):
    """An HF model whose forward returns one tensor of its ``ModelOutput`` (``key``).

    graphopt's passes, fidelity checks and backends compare tensors; a ``ModelOutput`` also
    carries optional fields (hidden states, caches) that change with the config.
    """

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out[self.key] if isinstance(out, dict) else getattr(out, self.key)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _image(channels: int = 3, size: int = 32, batch: int = 2) -> tuple[Tensor, ...]:
    return (torch.randn(batch, channels, size, size, generator=_gen(1)),)


def _tokens(vocab: int = 256, length: int = 16, batch: int = 2) -> tuple[Tensor, ...]:
    return (torch.randint(3, vocab, (batch, length), generator=_gen(1)),)


def _audio(samples: int = 1600, batch: int = 2) -> tuple[Tensor, ...]:
    return (torch.randn(batch, samples, generator=_gen(1)),)


def _hf(model_cls: str, config_cls: str, key: str, **config: Any) -> nn.Module:
    """An HF model from a config (seeded, eval mode, eager weights only), ``key`` returned."""
    import transformers

    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**config)
    model = getattr(transformers, model_cls)(cfg)
    return TensorOutput(model, key).eval()


# --------------------------------------------------------------------------- HF text

_TEXT = {  # a BERT-base layout at 1/12 of the width: FFN 4× the hidden size, 16-dim heads
    "vocab_size": 256,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "max_position_embeddings": 64,
}
_DECODER = {**_TEXT, "num_key_value_heads": 2}


def _text(model_cls: str, config_cls: str, key: str = "last_hidden_state", **config: Any):
    def build() -> Built:
        return _hf(model_cls, config_cls, key, **config), _tokens()

    return build


def _gpt2() -> Built:
    cfg = {"vocab_size": 256, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}
    cfg.update(bos_token_id=0, eos_token_id=0)
    return _hf("GPT2LMHeadModel", "GPT2Config", "logits", **cfg), _tokens()


# --------------------------------------------------------------------------- HF vision

_VIT = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "num_labels": 10,
}


def _vision(model_cls: str, config_cls: str, key: str = "logits", size: int = 32, **config: Any):
    def build() -> Built:
        return _hf(model_cls, config_cls, key, **config), _image(size=size)

    return build


# --------------------------------------------------------------------------- HF audio

_SPEECH = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "conv_dim": (16, 16),
    "conv_stride": (5, 4),
    "conv_kernel": (10, 4),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}


def _speech(model_cls: str, config_cls: str, **config: Any):
    def build() -> Built:
        return _hf(model_cls, config_cls, "last_hidden_state", **config), _audio()

    return build


def _whisper_encoder() -> Built:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(
        vocab_size=256,
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=128,
        num_mel_bins=16,
        max_source_positions=32,
        max_target_positions=32,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    encoder = transformers.WhisperModel(cfg).get_encoder()
    inputs = (torch.randn(2, 16, 64, generator=_gen(1)),)  # mel bins × 2·positions
    return TensorOutput(encoder, "last_hidden_state").eval(), inputs


def _ast() -> Built:
    cfg = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "num_mel_bins": 32,
        "max_length": 32,
        "patch_size": 16,
        "frequency_stride": 8,
        "time_stride": 8,
        "num_labels": 10,
    }
    model = _hf("ASTForAudioClassification", "ASTConfig", "logits", **cfg)
    return model, (torch.randn(2, 32, 32, generator=_gen(1)),)


# --------------------------------------------------------------------------- PyPI packages


def _monai(name: str, inputs: tuple[int, ...], **kwargs: Any):
    def build() -> Built:
        from monai.networks import nets

        torch.manual_seed(0)
        model = getattr(nets, name)(**kwargs).eval()
        return model, (torch.randn(*inputs, generator=_gen(1)),)

    return build


def _efficientnet_pytorch() -> Built:
    from efficientnet_pytorch import EfficientNet

    torch.manual_seed(0)
    model = EfficientNet.from_name(
        "efficientnet-b0", image_size=32, num_classes=10, width_coefficient=0.25
    )
    model.set_swish(memory_efficient=False)  # the memory-efficient one is an autograd.Function
    return model.eval(), _image()


def _pytorchcv(module: str, factory: str, size: int = 32, **kwargs: Any):
    def build() -> Built:
        # the module itself, not pytorchcv.model_provider, which imports torchvision
        mod = importlib.import_module(f"pytorchcv.models.{module}")
        torch.manual_seed(0)
        return getattr(mod, factory)(**kwargs).eval(), _image(size=size)

    return build


def _mlp_mixer() -> Built:
    from mlp_mixer_pytorch import MLPMixer

    torch.manual_seed(0)
    model = MLPMixer(image_size=32, channels=3, patch_size=8, dim=64, depth=2, num_classes=10)
    return model.eval(), _image()


# --------------------------------------------------------------------------- the registry

_HF = ("transformers", "transformers")

ARCHITECTURES: tuple[Architecture, ...] = (
    # ---- text
    Architecture("bert", "text", *_HF, _text("BertModel", "BertConfig", **_TEXT), fast=True),
    Architecture(
        "roberta", "text", *_HF, _text("RobertaModel", "RobertaConfig", pad_token_id=1, **_TEXT)
    ),
    Architecture(
        "distilbert",
        "text",
        *_HF,
        _text(
            "DistilBertModel",
            "DistilBertConfig",
            vocab_size=256,
            dim=64,
            n_layers=2,
            n_heads=4,
            hidden_dim=128,
            max_position_embeddings=64,
        ),
    ),
    Architecture(
        "albert",
        "text",
        *_HF,
        _text("AlbertModel", "AlbertConfig", embedding_size=32, **_TEXT),
        note="one layer applied twice: its weights are tied across the repeats",
    ),
    Architecture(
        "electra", "text", *_HF, _text("ElectraModel", "ElectraConfig", embedding_size=32, **_TEXT)
    ),
    Architecture(
        "deberta_v2",
        "text",
        *_HF,
        _text(
            "DebertaV2Model",
            "DebertaV2Config",
            relative_attention=True,
            position_buckets=16,
            pos_att_type=["p2c", "c2p"],
            **_TEXT,
        ),
    ),
    Architecture(
        "gpt2",
        "text",
        *_HF,
        _gpt2,
        fast=True,
        unmodified=("low_rank",),
        note="Conv1D is addmm(b, x, W[in, out]); low_rank factors linear and conv2d only",
    ),
    Architecture(
        "gpt_neo",
        "text",
        *_HF,
        _text(
            "GPTNeoModel",
            "GPTNeoConfig",
            vocab_size=256,
            max_position_embeddings=64,
            hidden_size=64,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            intermediate_size=128,
        ),
    ),
    Architecture(
        "opt",
        "text",
        *_HF,
        _text(
            "OPTModel",
            "OPTConfig",
            vocab_size=256,
            hidden_size=64,
            num_hidden_layers=2,
            ffn_dim=128,
            num_attention_heads=4,
            max_position_embeddings=64,
            word_embed_proj_dim=64,
        ),
    ),
    Architecture(
        "llama",
        "text",
        *_HF,
        _text("LlamaForCausalLM", "LlamaConfig", "logits", **_DECODER),
        fast=True,
    ),
    Architecture(
        "mistral",
        "text",
        *_HF,
        _text("MistralForCausalLM", "MistralConfig", "logits", sliding_window=8, **_DECODER),
    ),
    Architecture(
        "qwen2", "text", *_HF, _text("Qwen2ForCausalLM", "Qwen2Config", "logits", **_DECODER)
    ),
    Architecture(
        "phi",
        "text",
        *_HF,
        _text("PhiForCausalLM", "PhiConfig", "logits", partial_rotary_factor=0.5, **_TEXT),
    ),
    Architecture(
        "t5_encoder",
        "text",
        *_HF,
        _text(
            "T5EncoderModel",
            "T5Config",
            vocab_size=256,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
        ),
        fast=True,
    ),
    # ---- vision
    Architecture(
        "vit", "vision", *_HF, _vision("ViTForImageClassification", "ViTConfig", **_VIT), fast=True
    ),
    Architecture(
        "deit", "vision", *_HF, _vision("DeiTForImageClassification", "DeiTConfig", **_VIT)
    ),
    Architecture(
        "beit",
        "vision",
        *_HF,
        _vision(
            "BeitForImageClassification",
            "BeitConfig",
            use_relative_position_bias=True,
            use_mean_pooling=True,
            **_VIT,
        ),
    ),
    Architecture(
        "swin",
        "vision",
        *_HF,
        _vision(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=32,
            patch_size=2,
            embed_dim=16,
            depths=[2, 2],
            num_heads=[2, 4],
            window_size=4,
            num_labels=10,
        ),
        fast=True,
        note="window attention: computed window reshapes, roll, relative position bias",
    ),
    Architecture(
        "convnext",
        "vision",
        *_HF,
        _vision(
            "ConvNextForImageClassification",
            "ConvNextConfig",
            num_stages=2,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            num_labels=10,
        ),
        fast=True,
    ),
    Architecture(
        "resnet",
        "vision",
        *_HF,
        _vision(
            "ResNetForImageClassification",
            "ResNetConfig",
            embedding_size=16,
            hidden_sizes=[32, 64],
            depths=[1, 1],
            num_labels=10,
        ),
    ),
    Architecture(
        "regnet",
        "vision",
        *_HF,
        _vision(
            "RegNetForImageClassification",
            "RegNetConfig",
            embedding_size=16,
            hidden_sizes=[16, 32],
            depths=[1, 1],
            groups_width=8,
            num_labels=10,
        ),
    ),
    Architecture(
        "mobilenet_v1",
        "vision",
        *_HF,
        _vision(
            "MobileNetV1ForImageClassification",
            "MobileNetV1Config",
            depth_multiplier=0.25,
            image_size=32,
            num_labels=10,
        ),
    ),
    Architecture(
        "mobilenet_v2",
        "vision",
        *_HF,
        _vision(
            "MobileNetV2ForImageClassification",
            "MobileNetV2Config",
            depth_multiplier=0.25,
            image_size=32,
            num_labels=10,
        ),
    ),
    Architecture(
        "efficientnet",
        "vision",
        *_HF,
        _vision(
            "EfficientNetForImageClassification",
            "EfficientNetConfig",
            image_size=32,
            width_coefficient=0.25,
            depth_coefficient=0.25,
            hidden_dim=320,  # the head conv's width: round_filters(1280) at width 0.25
            num_labels=10,
        ),
    ),
    Architecture(
        "mobilevit",
        "vision",
        *_HF,
        _vision(
            "MobileViTForImageClassification",
            "MobileViTConfig",
            image_size=32,
            hidden_sizes=[32, 48, 64],
            neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
            num_attention_heads=2,
            num_labels=10,
        ),
    ),
    Architecture(
        "poolformer",
        "vision",
        *_HF,
        _vision(
            "PoolFormerForImageClassification",
            "PoolFormerConfig",
            hidden_sizes=[16, 32, 48, 64],
            depths=[1, 1, 1, 1],
            num_labels=10,
        ),
    ),
    Architecture(
        "segformer",
        "vision",
        *_HF,
        _vision(
            "SegformerForSemanticSegmentation",
            "SegformerConfig",
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[16, 32],
            num_attention_heads=[1, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
            mlp_ratios=[2, 2],
            decoder_hidden_size=32,
            num_labels=4,
        ),
    ),
    Architecture(
        "levit",
        "vision",
        *_HF,
        _vision(
            "LevitForImageClassification",
            "LevitConfig",
            size=64,
            image_size=64,
            hidden_sizes=[32, 48, 64],
            num_attention_heads=[2, 2, 2],
            depths=[1, 1, 1],
            key_dim=[8, 8, 8],
            num_labels=10,
        ),
    ),
    # ---- audio
    Architecture("wav2vec2", "audio", *_HF, _speech("Wav2Vec2Model", "Wav2Vec2Config", **_SPEECH)),
    Architecture(
        "hubert", "audio", *_HF, _speech("HubertModel", "HubertConfig", **_SPEECH), fast=True
    ),
    Architecture("whisper_encoder", "audio", *_HF, _whisper_encoder),
    Architecture("ast", "audio", *_HF, _ast),
    # ---- PyPI packages of plain PyTorch models
    Architecture(
        "monai_unet",
        "vision",
        "monai",
        "monai",
        _monai(
            "UNet",
            (2, 1, 32, 32),
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            channels=(8, 16, 32),
            strides=(2, 2),
            num_res_units=1,
        ),
        fast=True,
        note="PReLU, InstanceNorm, transposed convs, residual units, skip concats",
    ),
    Architecture(
        "monai_basic_unet",
        "vision",
        "monai",
        "monai",
        _monai(
            "BasicUNet",
            (2, 1, 32, 32),
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            features=(8, 8, 16, 16, 32, 8),
        ),
    ),
    Architecture(
        "monai_segresnet",
        "vision",
        "monai",
        "monai",
        _monai(
            "SegResNet",
            (2, 1, 32, 32),
            spatial_dims=2,
            init_filters=8,
            in_channels=1,
            out_channels=2,
            blocks_down=(1, 1, 1),
            blocks_up=(1, 1),
        ),
    ),
    Architecture(
        "monai_attention_unet",
        "vision",
        "monai",
        "monai",
        _monai(
            "AttentionUnet",
            (2, 1, 32, 32),
            spatial_dims=2,
            in_channels=1,
            out_channels=2,
            channels=(8, 16, 32),
            strides=(2, 2),
        ),
    ),
    Architecture(
        "efficientnet_pytorch",
        "vision",
        "efficientnet_pytorch",
        "efficientnet_pytorch",
        _efficientnet_pytorch,
        fast=False,  # 29 s, the slowest entry: the benchmark runs it; MONAI covers packages here
    ),
    Architecture(
        "pytorchcv_resnet20",
        "vision",
        "pytorchcv",
        "pytorchcv",
        _pytorchcv("resnet_cifar", "resnet20_cifar10"),
    ),
    Architecture(
        "pytorchcv_shufflenetv2",
        "vision",
        "pytorchcv",
        "pytorchcv",
        _pytorchcv("shufflenetv2", "shufflenetv2_wd2", size=224, num_classes=10),
    ),
    Architecture(
        "pytorchcv_densenet40",
        "vision",
        "pytorchcv",
        "pytorchcv",
        _pytorchcv("densenet_cifar", "densenet40_k12_cifar10"),
    ),
    Architecture("mlp_mixer", "vision", "mlp-mixer-pytorch", "mlp_mixer_pytorch", _mlp_mixer),
)


def get(name: str) -> Architecture:
    """The entry called ``name`` (``KeyError`` listing the names otherwise)."""
    for entry in ARCHITECTURES:
        if entry.name == name:
            return entry
    raise KeyError(f"no architecture {name!r}; choose from {[a.name for a in ARCHITECTURES]}")
