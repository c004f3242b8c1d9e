"""A small CNN for scikit-learn's 8x8 handwritten digits: the accuracy test model.

    python examples/train_digits.py --out artifacts/digits
    edgepipe build examples/models/digits_cnn.py:digits_cnn \
        --weights artifacts/digits/digits_cnn.pt --calib artifacts/digits/digits_test.npz

It trains in seconds on a CPU, so tests train it themselves: no weights are committed.
"""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        )
        self.classifier = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def digits_cnn() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Input: a batch of one 1x8x8 image scaled to [0, 1]; output: 10 logits."""
    return DigitsCNN().eval(), {"input": torch.rand(1, 1, 8, 8)}
