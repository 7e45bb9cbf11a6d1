"""A small conv net trained on a digits subset in about a second, shared by recovery tests.

Why not the task's ResNet: tests must not depend on the cached trained digits model, and a
net this small trains fast enough to make every recovery claim checkable on real accuracy.
"""

from __future__ import annotations

import copy
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from graphopt.data import batches
from graphopt.tasks import digits

TRAIN_SAMPLES = 512


class SmallNet(nn.Module):
    """Two strided conv-BN-ReLU stages, a 4×4 average pool, flatten, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


@cache
def _trained_state() -> dict[str, torch.Tensor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = SmallNet()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(4):
            for x, y in train_batches():
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def trained_small_net() -> SmallNet:
    """A fresh copy of the trained net, in eval mode (test accuracy about 90%)."""
    model = SmallNet()
    model.load_state_dict(_trained_state())
    return model.eval()


def train_batches(batch_size: int = 64):
    split = digits.load_split()
    x, y = split.x_train[:TRAIN_SAMPLES], split.y_train[:TRAIN_SAMPLES]
    return batches(x, y, batch_size, shuffle=True, seed=0)


def damaged(model: nn.Module, scale: float = 0.6, seed: int = 1) -> nn.Module:
    """A copy with seeded noise added to its conv weights (accuracy drops well below 90%)."""
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                noise = torch.randn(m.weight.shape, generator=generator)
                m.weight.add_(scale * m.weight.std() * noise)
    return model


def accuracy(model: nn.Module) -> float:
    return digits.accuracy(model)["accuracy"]
