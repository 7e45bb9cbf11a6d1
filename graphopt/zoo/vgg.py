"""VGG-11 with BatchNorm in plain torch, with torchvision's module layout.

Why it is in the zoo: no skip connections, so every conv's output channels can be pruned
freely (the easy case that pruning tests start from), and a huge first classifier layer
(512·7·7 → 4096) fed by ``adaptive_avg_pool2d`` + ``flatten`` — pruning a conv channel there
removes 49 input columns of ``classifier.0``, the flatten case channel pruning must get right.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["VGG", "vgg11_bn"]

# Configuration "A" of the paper: output channels, "M" for a 2x2 max pool.
_CFG_A: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _make_features(cfg: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out_channels = int(item)
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """The torchvision VGG: ``features``, a 7x7 adaptive average pool, a 3-layer ``classifier``."""

    def __init__(
        self,
        features: nn.Sequential,
        num_classes: int = 1000,
        hidden_features: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, hidden_features),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden_features, num_classes),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(x.flatten(1))


def vgg11_bn(*, num_classes: int = 1000, hidden_features: int = 4096) -> VGG:
    """VGG-11 with BatchNorm (132.9 M parameters at the standard 4096-wide classifier).

    ``hidden_features`` narrows the two 4096-wide classifier layers for quick experiments;
    the default is the standard architecture.
    """
    return VGG(_make_features(_CFG_A), num_classes=num_classes, hidden_features=hidden_features)
