"""Small models for pruning tests: each exercises one coupling rule of the dependency graph."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvChain(nn.Module):
    """conv → relu → conv → relu → pool → flatten → fc, no BatchNorm (dead channels stay 0)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.fc = nn.Linear(width * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))


class SqueezeExcite(nn.Module):
    """Residual block with a squeeze-excite gate: mean → linear → sigmoid → mul."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.body = nn.Conv2d(c, c, 3, padding=1)
        self.se1 = nn.Linear(c, 8)
        self.se2 = nn.Linear(8, c)
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = self.body(x)
        gate = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3))))))
        x = x + y * gate[:, :, None, None]
        return self.head(x.mean((2, 3)))


class GroupedAndSplit(nn.Module):
    """Grouped conv (4 groups), depthwise ×2 multiplier, chunk on channels, GroupNorm, conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(4, 16)
        self.depthwise = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.left = nn.Conv2d(16, 8, 1)
        self.right = nn.Conv2d(16, 8, 1)
        self.seq = nn.Conv1d(16, 12, 3, padding=1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x))
        x = F.silu(self.gn(self.grouped(x)))
        a, b = torch.chunk(self.depthwise(x), 2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], dim=1)
        x = self.seq(x.flatten(2))
        return self.fc(x.amax(2))


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle: view into (groups, c/groups), transpose, view back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 1)
        self.conv2 = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(self.conv2(F.relu(x)).mean((2, 3)))


class Unknown(nn.Module):
    """conv → cumsum over channels (not understood) → conv: the first conv must stay whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cumsum(self.conv1(x), dim=1)
        return self.conv3(F.relu(self.conv2(x)))


class InputResidual(nn.Module):
    """A conv added to the graph input: its channels are the input's and cannot change."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(F.relu(self.conv2(x + self.conv1(x))))


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every parameter from ``seed`` (and BN statistics), in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def trace_again(model: nn.Module, inputs: tuple[Tensor, ...]):
    """A fresh trace of ``model`` (after its weights were edited in a test)."""
    from graphopt.capture import trace

    return trace(model, inputs)
