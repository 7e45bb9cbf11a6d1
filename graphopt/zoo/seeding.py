"""Seeded construction and non-trivial normalisation statistics for zoo models.

Why randomise BatchNorm statistics: a freshly built BatchNorm has running_mean 0,
running_var 1, weight 1 and bias 0, i.e. it is the identity (up to eps). A BN-folding pass
that forgot the mean, swapped gamma and beta or mis-broadcast the variance would still pass
its tests on such a model. Every zoo model, and the random models of the test strategies,
therefore gets seeded, clearly non-identity statistics:

    running_var ~ U[0.5, 2]      running_mean ~ 0.1 · N(0, 1)
    weight      ~ U[0.6, 1.4]    bias         ~ 0.1 · N(0, 1)

LayerNorm affine parameters get the same weight/bias treatment, for the same reason. And
conv/linear biases that an architecture's init left at exactly zero (torchvision's VGG and
MobileNet heads, BERT's linears) get ``0.02 · N(0, 1)``: a fold that dropped a conv bias must
change the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn

__all__ = ["randomize_norm_stats", "randomize_zero_biases", "seeded", "seeded_build"]

_ModuleT = TypeVar("_ModuleT", bound=nn.Module)

# The norm statistics use their own stream, so adding a layer to a model's constructor does
# not silently reshuffle the statistics of every other model built with the same seed.
_NORM_STREAM_OFFSET = 0x5EED


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the global CPU RNG seeded, restoring the caller's RNG state after.

    Module constructors draw their default initialisation from the global RNG, so seeding it
    (rather than threading a generator through every ``nn.init`` call) is what makes a whole
    model reproducible; ``fork_rng`` keeps the caller's own random stream undisturbed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seeded_build(builder: Callable[[], _ModuleT], seed: int) -> _ModuleT:
    """Build under ``seeded(seed)``, randomise norm stats and zero biases; return it in eval."""
    with seeded(seed):
        model = builder()
    generator = torch.Generator().manual_seed(seed + _NORM_STREAM_OFFSET)
    randomize_norm_stats(model, generator)
    randomize_zero_biases(model, generator)
    return model.eval()


@torch.no_grad()
def randomize_norm_stats(model: nn.Module, generator: torch.Generator) -> int:
    """Give every BatchNorm/LayerNorm in ``model`` seeded non-trivial statistics, in place.

    Returns how many norm layers were changed, so callers can check the model had any.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.track_running_stats and module.running_mean is not None:
                n = module.running_mean.numel()
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=generator))
            _randomize_affine(module, generator)
            changed += 1
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            _randomize_affine(module, generator)
            changed += 1
    return changed


def _randomize_affine(module: nn.Module, generator: torch.Generator) -> None:
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if isinstance(weight, torch.Tensor):
        weight.copy_(0.6 + 0.8 * torch.rand(weight.shape, generator=generator))
    if isinstance(bias, torch.Tensor):
        bias.copy_(0.1 * torch.randn(bias.shape, generator=generator))


@torch.no_grad()
def randomize_zero_biases(model: nn.Module, generator: torch.Generator) -> int:
    """Give every all-zero conv/linear bias seeded small values, in place; return how many."""
    changed = 0
    for module in model.modules():
        if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        bias = module.bias
        if isinstance(bias, torch.Tensor) and not bias.any():
            bias.copy_(0.02 * torch.randn(bias.shape, generator=generator))
            changed += 1
    return changed
