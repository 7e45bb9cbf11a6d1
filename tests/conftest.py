"""Test-wide settings.

One intra-op thread: tests check correctness, never speed, and on a shared 2-core machine
torch's default thread pool oversubscribes the cores (seen here: 50× slower eager ResNet-50).

Hypothesis draws new random architectures on every local run (that is how the random-model
tests find bugs); under CI (``CI`` set) it is derandomized, so a landing run is reproducible
and a red CI is never a coin flip.
"""

import os

import torch
from hypothesis import settings

torch.set_num_threads(1)

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
