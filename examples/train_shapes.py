"""Train the shapes detector on synthetic scenes (scikit-image's `random_shapes`), no download.

Writes into --out:
- `shapes_detector.pt`: the state dict, for `--weights`;
- `val/`: held-out scenes as PNGs with COCO boxes (`instances.json`), for `--eval`;
- `calib/`: other scenes (images only), for `--calib`;
- a `preprocess.toml` beside each set of images: RGB / 255, letterboxed to 128x128.

Scenes are 160x120 (not the model's square input), so letterboxing is real: the images are
scaled by 0.8 and padded 16 pixels above and below, by the same code the device runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent / "models"))
from shapes_detector import CLASSES, IMAGE_SIZE, REG_MAX, ShapesDetector

SCENE = (120, 160)  # height, width
PREPROCESS = 'resize_mode = "letterbox"\nscale = 0.00392156862745098\nchannels = "rgb"\nlayout = "NCHW"\n'


def scene(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB scene (H, W, 3) uint8 with boxes (K, 4) x y w h in pixels and class indices (K,)."""
    from skimage.draw import random_shapes

    image, labels = random_shapes(SCENE, max_shapes=4, min_shapes=1, min_size=14, max_size=60,
                                  channel_axis=-1, allow_overlap=False, rng=seed)
    boxes, classes = [], []
    for name, ((r0, r1), (c0, c1)) in labels:
        boxes.append([c0, r0, c1 - c0, r1 - r0])
        classes.append(CLASSES.index(name))
    return image, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int64)


def letterboxed(image: np.ndarray) -> np.ndarray:
    """The device's preprocessing (edgepipe.runtime.feeds), applied to an in-memory scene."""
    from PIL import Image

    from edgepipe.runtime.detection import letterbox_geometry

    height, width = image.shape[:2]
    _, new_w, new_h, left, top = letterbox_geometry(width, height, (IMAGE_SIZE, IMAGE_SIZE))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32)
    canvas = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 114.0, np.float32)
    canvas[top:top + new_h, left:left + new_w] = resized
    return (canvas / 255.0).transpose(2, 0, 1)


def to_input_frame(boxes: np.ndarray) -> np.ndarray:
    """x y w h in scene pixels to x1 y1 x2 y2 in the letterboxed input."""
    from edgepipe.runtime.detection import letterbox_geometry

    scale, _, _, left, top = letterbox_geometry(SCENE[1], SCENE[0], (IMAGE_SIZE, IMAGE_SIZE))
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1) * scale
    return xyxy + np.asarray([left, top, left, top], np.float32)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise IoU and GIoU of matching x1 y1 x2 y2 rows."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1) + (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    union = area - inter + 1e-7
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(1) + 1e-7
    iou = inter / union
    return iou, iou - (hull - union) / hull


def assign(model: ShapesDetector, boxes: np.ndarray,
           classes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Each anchor's target box and class (-1: background): anchors whose centre lies inside a box
    and within 2.5 strides of its centre, with every side within the DFL range; the smallest box
    wins an anchor two boxes claim."""
    anchors = (model.anchors[0].T * model.strides[0].T)  # (N, 2) pixels
    strides = model.strides[0, 0]
    n = anchors.shape[0]
    target_box = torch.zeros(n, 4)
    target_cls = torch.full((n,), -1, dtype=torch.long)
    best_area = torch.full((n,), float("inf"))
    for box, cls in zip(torch.from_numpy(boxes), torch.from_numpy(classes), strict=True):
        ltrb = torch.cat([anchors - box[:2], box[2:] - anchors], 1) / strides[:, None]
        centre = (box[:2] + box[2:]) / 2
        near = ((anchors - centre).abs() <= 2.5 * strides[:, None]).all(1)
        fits = (ltrb > 0.1).all(1) & (ltrb < REG_MAX - 1.01).all(1) & near
        area = (box[2:] - box[:2]).prod()
        win = fits & (area < best_area)
        target_box[win], target_cls[win], best_area[win] = box, cls, area
    return target_box, target_cls


def loss_of(model: ShapesDetector, images: torch.Tensor, targets: list[tuple[torch.Tensor, torch.Tensor]]
            ) -> torch.Tensor:
    bins, logits = model.raw(images)
    anchors = model.anchors[0].T  # (N, 2) in strides
    strides = model.strides[0, 0]
    cls_target = torch.zeros_like(logits)
    box_terms, dfl_terms, positives = [], [], 0
    for index, (target_box, target_cls) in enumerate(targets):
        positive = target_cls >= 0
        count = int(positive.sum())
        if count == 0:
            continue
        positives += count
        image_bins = bins[index][:, positive]  # (4*R, P)
        ltrb = model.distances(image_bins[None])[0].T  # (P, 4) strides
        a, s = anchors[positive], strides[positive, None]
        predicted = torch.cat([a - ltrb[:, :2], a + ltrb[:, 2:]], 1) * s
        iou, giou = box_iou(predicted, target_box[positive])
        box_terms.append((1 - giou).sum())
        cls_target[index, target_cls[positive], positive.nonzero()[:, 0]] = iou.detach().clamp(min=0.05)
        wanted = torch.cat([a - target_box[positive, :2] / s, target_box[positive, 2:] / s - a], 1)
        wanted = wanted.clamp(0, REG_MAX - 1.01)  # (P, 4)
        left = wanted.floor().long()
        weight_right = wanted - left
        log_p = image_bins.T.reshape(-1, 4, REG_MAX).log_softmax(2)  # (P, 4, R)
        picked = (log_p.gather(2, left[..., None])[..., 0] * (1 - weight_right)
                  + log_p.gather(2, (left + 1)[..., None])[..., 0] * weight_right)
        dfl_terms.append(-picked.mean(1).sum())
    normal = max(positives, 1)
    cls_loss = F.binary_cross_entropy_with_logits(logits, cls_target, reduction="sum") / normal
    box_loss = (sum(box_terms) / normal) if box_terms else logits.sum() * 0
    dfl_loss = (sum(dfl_terms) / normal) if dfl_terms else logits.sum() * 0
    return cls_loss + 2.0 * box_loss + 0.5 * dfl_loss


def train(scenes: int, epochs: int, seed: int = 0, log=print) -> ShapesDetector:
    torch.manual_seed(seed)
    model = ShapesDetector()
    started = time.perf_counter()
    images, targets = [], []
    for index in range(scenes):
        image, boxes, classes = scene(seed * 1_000_000 + index)
        images.append(letterboxed(image))
        targets.append(assign(model, to_input_frame(boxes), classes))
    data = torch.from_numpy(np.stack(images))
    log(f"{scenes} scenes ready in {time.perf_counter() - started:.0f} s")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    steps = epochs * math.ceil(scenes / 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    for epoch in range(epochs):
        model.train()
        total = 0.0
        for batch in torch.randperm(scenes).split(32):
            optimizer.zero_grad()
            loss = loss_of(model, data[batch], [targets[i] for i in batch.tolist()])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / scenes:.3f} ({time.perf_counter() - started:.0f} s)")
    return model.eval()


def write_set(folder: Path, seeds: range, with_boxes: bool) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "preprocess.toml").write_text(PREPROCESS, encoding="utf-8")
    images, annotations = [], []
    for image_id, seed in enumerate(seeds, 1):
        image, boxes, classes = scene(seed)
        name = f"scene_{seed}.png"
        Image.fromarray(image).save(folder / name)
        images.append({"id": image_id, "file_name": name, "width": SCENE[1], "height": SCENE[0]})
        for box, cls in zip(boxes.tolist(), classes.tolist(), strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cls + 1,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
    if with_boxes:
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)]
        (folder / "instances.json").write_text(json.dumps(
            {"images": images, "annotations": annotations, "categories": categories}), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/shapes"))
    parser.add_argument("--scenes", type=int, default=2400)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--val", type=int, default=200, help="held-out scenes with boxes")
    parser.add_argument("--calib", type=int, default=128, help="calibration scenes")
    args = parser.parse_args()
    write_example(args.out, scenes=args.scenes, epochs=args.epochs, val=args.val, calib=args.calib)
    print(f"wrote {args.out}/shapes_detector.pt, val/ ({args.val} scenes with COCO boxes), "
          f"calib/ ({args.calib} scenes)")


def write_example(out: Path, *, scenes: int, epochs: int, val: int, calib: int, log=print) -> Path:
    """Train, then write the weights and the two image sets; returns the weights' path."""
    model = train(scenes, epochs, log=log)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "shapes_detector.pt")
    # Seeds apart from training's (0 .. scenes-1) and from each other.
    write_set(out / "val", range(10_000_000, 10_000_000 + val), with_boxes=True)
    write_set(out / "calib", range(20_000_000, 20_000_000 + calib), with_boxes=False)
    return out / "shapes_detector.pt"


if __name__ == "__main__":
    main()
