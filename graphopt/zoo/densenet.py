"""A tiny DenseNet (two dense blocks), with torchvision's DenseNet module names.

Why it is in the zoo: every dense layer reads the ``torch.cat`` of all earlier feature maps
and starts with BatchNorm → ReLU (pre-activation), so its BatchNorms follow a concat, not a
conv, and cannot be folded backwards; and pruning one conv's output channels must remove the
matching slice of every later layer's input — the concat case of a pruning dependency graph.
It is small enough (about 21 k parameters) for fast pruning tests.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition", "densenet_tiny"]


class DenseLayer(nn.Module):
    """BN → ReLU → 1x1 conv (bottleneck) → BN → ReLU → 3x3 conv producing ``growth_rate`` maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.ModuleDict):
    """``num_layers`` dense layers; the block returns the concat of its input and all outputs."""

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN → ReLU → 1x1 conv (halves the channels) → 2x2 average pool."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """Stem (``features.conv0/norm0/relu0/pool0``), dense blocks with transitions, classifier."""

    def __init__(
        self,
        *,
        growth_rate: int,
        block_config: tuple[int, ...],
        num_init_features: int,
        bn_size: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, num_init_features, 3, padding=1, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(num_init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(kernel_size=2, stride=2))
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, bn_size, growth_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.features(x))
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        return self.classifier(x.flatten(1))


def densenet_tiny(
    *,
    num_classes: int = 10,
    growth_rate: int = 8,
    block_config: tuple[int, ...] = (3, 3),
    num_init_features: int = 16,
    bn_size: int = 4,
) -> DenseNet:
    """Two dense blocks of three layers, growth rate 8: a DenseNet small enough for unit tests."""
    return DenseNet(
        growth_rate=growth_rate,
        block_config=block_config,
        num_init_features=num_init_features,
        bn_size=bn_size,
        num_classes=num_classes,
    )
