"""A small YOLOv8-style one-stage detector: the detection example.

Anchor-free, two levels (strides 8 and 16), a decoupled head (a box branch ending in
distribution-focal (DFL) bins, a class branch ending in sigmoid scores), and the decode in the
graph, so its output is what Ultralytics' YOLOv8 exports: `(batch, 4 + classes, anchors)`, rows
cx, cy, w, h in input pixels, then one score per class. The anchors follow the feature maps'
sizes, as in Ultralytics' `make_anchors`, so an export with dynamic batch and image size
(`--input images:1x3x96x96/1x3x128x128/4x3x256x256`) decodes every size right.

    python examples/train_shapes.py --out artifacts/shapes      # synthetic scenes, minutes on a CPU
    edgepipe build examples/models/shapes_detector.py:shapes_detector \
        --weights artifacts/shapes/shapes_detector.pt --profile int8 \
        --calib artifacts/shapes/calib --eval artifacts/shapes/val

Trained on scikit-image's `random_shapes` scenes (rectangles, circles, triangles, ellipses), so
no weights are committed and nothing is downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSES = ("rectangle", "circle", "triangle", "ellipse")
IMAGE_SIZE = 128
STRIDES = (8, 16)
REG_MAX = 8  # DFL bins per box side: distances up to 7 strides


def conv(c_in: int, c_out: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out), nn.SiLU())


class Residual(nn.Module):
    """YOLOv8's bottleneck: two 3x3 convs and a skip connection."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(c, c), conv(c, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Head(nn.Module):
    """One level of the decoupled head: box bins and class logits."""

    def __init__(self, c_in: int, classes: int, width: int) -> None:
        super().__init__()
        self.box = nn.Sequential(conv(c_in, width), conv(width, width), nn.Conv2d(width, 4 * REG_MAX, 1))
        self.cls = nn.Sequential(conv(c_in, width), conv(width, width), nn.Conv2d(width, classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.box(x), self.cls(x)


class ShapesDetector(nn.Module):
    def __init__(self, classes: int = len(CLASSES), image_size: int = IMAGE_SIZE) -> None:
        super().__init__()
        self.classes = classes
        self.stem = nn.Sequential(conv(3, 16, s=2), conv(16, 32, s=2), Residual(32))   # stride 4
        self.p3 = nn.Sequential(conv(32, 64, s=2), Residual(64))                        # stride 8
        self.p4 = nn.Sequential(conv(64, 128, s=2), Residual(128))                      # stride 16
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse3 = conv(128 + 64, 64, k=1)
        self.heads = nn.ModuleList([Head(64, classes, 64), Head(128, classes, 64)])
        # The grid at the training size, for the training targets (forward reads its own off the maps).
        anchors, strides = [], []
        for stride in STRIDES:
            cells = image_size // stride
            ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
            anchors.append(torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5)
            strides.append(torch.full((cells * cells, 1), float(stride)))
        self.register_buffer("anchors", torch.cat(anchors).T[None], persistent=False)   # (1, 2, N)
        self.register_buffer("strides", torch.cat(strides).T[None], persistent=False)   # (1, 1, N)
        self.register_buffer("bins", torch.arange(REG_MAX, dtype=torch.float32), persistent=False)

    def levels(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each level's box bins (B, 4*REG_MAX, H, W) and class logits (B, classes, H, W)."""
        c3 = self.p3(self.stem(x))
        c4 = self.p4(c3)
        f3 = self.fuse3(torch.cat([self.up(c4), c3], 1))
        return [head(f) for head, f in zip(self.heads, (f3, c4), strict=True)]

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box bins (B, 4*REG_MAX, N) and class logits (B, classes, N): what training needs."""
        boxes, logits = zip(*self.levels(x), strict=True)
        flat = lambda ts: torch.cat([t.flatten(2) for t in ts], 2)  # noqa: E731
        return flat(boxes), flat(logits)

    @staticmethod
    def grid(levels: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchor centres (1, 2, N) in strides and strides (1, 1, N) for these feature maps: read
        off their sizes, so an exported graph computes them for whatever size it is given."""
        anchors, strides = [], []
        for (bins, _), stride in zip(levels, STRIDES, strict=True):
            height, width = bins.shape[2], bins.shape[3]
            xs = torch.arange(width, dtype=torch.float32, device=bins.device) + 0.5
            ys = torch.arange(height, dtype=torch.float32, device=bins.device) + 0.5
            ys, xs = torch.meshgrid(ys, xs, indexing="ij")
            anchors.append(torch.stack([xs, ys], -1).reshape(-1, 2))
            strides.append(torch.full_like(xs.reshape(-1, 1), float(stride)))
        return torch.cat(anchors).T[None], torch.cat(strides).T[None]

    def distances(self, bins: torch.Tensor) -> torch.Tensor:
        """DFL: the expected distance (in strides) of each box side, from its bins' softmax."""
        b, _, n = bins.shape
        probabilities = bins.view(b, 4, REG_MAX, n).softmax(2)
        return (probabilities * self.bins.view(1, 1, REG_MAX, 1)).sum(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.levels(x)
        anchors, strides = self.grid(levels)
        flat = lambda ts: torch.cat([t.flatten(2) for t in ts], 2)  # noqa: E731
        bins, logits = flat([b for b, _ in levels]), flat([c for _, c in levels])
        ltrb = self.distances(bins)
        lt, rb = ltrb[:, :2], ltrb[:, 2:]
        x1y1, x2y2 = anchors - lt, anchors + rb
        cxcy, wh = (x1y1 + x2y2) / 2, x2y2 - x1y1
        return torch.cat([cxcy * strides, wh * strides, logits.sigmoid()], 1)


def shapes_detector() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Input `images`: one RGB image scaled to [0, 1], 1x3x128x128 (letterboxed); output: (1, 4 + 4
    classes, 320 anchors), as YOLOv8 exports it."""
    return ShapesDetector().eval(), {"images": torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE)}
