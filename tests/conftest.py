"""Test-wide settings.

One intra-op thread: tests check correctness, never speed, and on a shared 2-core machine
torch's default thread pool oversubscribes the cores (seen here: 50× slower eager ResNet-50).
"""

import torch

torch.set_num_threads(1)
