"""Small models for the rules added to channel pruning: each uses one op family a real model has.

Padding, InstanceNorm and PReLU (image-to-image nets), transposed convs with skips (U-Net),
pixel shuffle (super-resolution), channel shuffle (ShuffleNetV2), products with a parameter
operand (GPT-2's ``Conv1D``, einsum), tied embedding and LM head, a conv applied twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Pads(nn.Module):
    """Every padding form on the spatial dims, then a constant pad of the channel dim."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.zero = nn.ZeroPad2d(1)
        self.reflect = nn.ReflectionPad2d((1, 2, 0, 1))
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.conv3 = nn.Conv2d(11, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reflect(self.zero(self.conv1(x)))
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        x = F.pad(x, (1, 1, 1, 1), mode="circular")
        x = F.relu(self.conv2(x))
        x = F.pad(x, (0, 0, 0, 0, 2, 1), value=0.5)  # 2 fixed channels before, 1 after
        return self.conv3(x).mean((2, 3))


class PadsTheChannels(nn.Module):
    """Reflect- or crop-padding of the channel dim: the conv before it must stay whole."""

    def __init__(self, pad: tuple[int, ...], mode: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8 + sum(pad[4:]), 4, 1)
        self.pad, self.mode = pad, mode

    def forward(self, x: Tensor) -> Tensor:
        # reflect: 6 pads on a 4-d tensor pad it as an unbatched (C, D, H, W) one
        return self.conv2(F.pad(self.conv1(x), self.pad, mode=self.mode))


class Upsampling(nn.Module):
    """Every interpolate mode torch.export keeps as its own op, between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(self.conv1(x), scale_factor=2)
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        x = F.interpolate(x, size=(10, 10), mode="bicubic", align_corners=True)
        x = F.interpolate(x, scale_factor=0.8, mode="nearest-exact")
        x = F.interpolate(x, scale_factor=1.5, mode="bilinear", antialias=True)
        return self.conv2(x)


class InstanceNormPReLU(nn.Module):
    """conv → InstanceNorm (affine) → PReLU(C) → conv → InstanceNorm (running stats) → PReLU()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.in1 = nn.InstanceNorm2d(8, affine=True)
        self.act1 = nn.PReLU(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.in2 = nn.InstanceNorm2d(8, affine=True, track_running_stats=True)
        self.act2 = nn.PReLU()
        self.in3 = nn.InstanceNorm2d(8)
        self.conv3 = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.in1(self.conv1(x)))
        x = self.act2(self.in2(self.conv2(x)))
        return self.conv3(self.in3(x))


class UNet(nn.Module):
    """Encoder, stride-2 conv, ConvTranspose2d back up plus the skip, a transposed conv with
    output_padding, a grouped transposed conv and a 1×1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.dec = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.grouped = nn.ConvTranspose2d(6, 6, 3, padding=1, groups=3)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.relu(self.enc(x))
        x = F.relu(self.up(F.relu(self.down(skip))) + skip)
        x = F.relu(self.grouped(F.relu(self.dec(x))))
        return self.head(x)


class Transposed1d(nn.Module):
    """conv1d → ConvTranspose1d (grouped, no bias) → ConvTranspose1d → conv1d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.up1 = nn.ConvTranspose1d(8, 6, 4, stride=2, groups=2, bias=False)
        self.up2 = nn.ConvTranspose1d(6, 5, 3)
        self.head = nn.Conv1d(5, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.up2(F.relu(self.up1(F.relu(self.conv(x)))))))


class Transposed3d(nn.Module):
    """conv3d → ConvTranspose3d → conv3d."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 6, 3, padding=1)
        self.up = nn.ConvTranspose3d(6, 4, 2, stride=2)
        self.head = nn.Conv3d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.up(F.relu(self.conv(x)))))


class PixelShuffle(nn.Module):
    """conv (16 = 4·2²) → PixelShuffle(2) → conv → PixelUnshuffle(2) → conv (32 = 8·2²)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv3 = nn.Conv2d(32, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.shuffle(self.conv1(x)))
        return self.conv3(self.unshuffle(F.relu(self.conv2(x))))


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """torchvision's ShuffleNetV2 shuffle, verbatim."""
    b, c, h, w = x.shape
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's basic unit: chunk, one branch, cat, shuffle with 2 groups, then a conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = F.relu(self.stem(x)).chunk(2, dim=1)
        x = channel_shuffle(torch.cat([x1, F.relu(self.branch(x2))], dim=1), 2)
        return self.head(x)


class ParamProducts(nn.Module):
    """einsum, matmul + a hand-added bias, mm after a view(-1, C), W @ x, then a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(8, 16))
        self.w2 = nn.Parameter(torch.empty(16, 12))
        self.b2 = nn.Parameter(torch.empty(12))
        self.w3 = nn.Parameter(torch.empty(12, 10))
        self.wl = nn.Parameter(torch.empty(6, 10))
        self.out = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(torch.einsum("bsi,io->bso", x, self.w1))
        h = F.relu(h @ self.w2 + self.b2)
        b, t, _ = h.shape
        h = F.relu(torch.mm(h.reshape(-1, 12), self.w3).view(b, t, 10))
        h = torch.matmul(self.wl, h.transpose(1, 2))  # (b, 6, t)
        return self.out(F.relu(h.transpose(1, 2)))


class Conv1DBlock(nn.Module):
    """GPT-2's MLP with HF's ``Conv1D`` (addmm, weight [in, out]) on an embedded stream."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.embed = nn.Embedding(30, 16)
        self.c_fc = Conv1D(32, 16)
        self.c_proj = Conv1D(16, 32)
        self.head = Conv1D(5, 16)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        x = x + self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return self.head(x)


class TiedLM(nn.Module):
    """Token embedding tied to the LM head (``linear(x, embed.weight)``), a residual MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.lm_head = nn.Linear(16, 40, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embed(ids)
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.lm_head(x)


class ConvTwice(nn.Module):
    """One conv applied twice (a shared block): its input and output channels are tied."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        x = F.relu(self.shared(F.relu(self.shared(x))))
        return self.head(x)


class SharedWithUnknown(nn.Module):
    """A linear weight also read by an op pruning does not slice: the tie freezes it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x))) + self.fc1.weight.cumsum(0).sum()
