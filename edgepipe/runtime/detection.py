"""Detections from a detector's raw head output: decode and non-maximum suppression.

One implementation for the build (the mAP gate scores what the device will report) and for
run.py on the device. Written by hand in numpy because run.py needs only numpy and the
backend's runtime: torchvision's and OpenCV's NMS are not on a board that has onnxruntime or
the LiteRT interpreter and nothing else.

The head format is Ultralytics' YOLOv8/v11 export, the one most edge detectors ship:
`(batch, 4 + classes, anchors)` with rows cx, cy, w, h in input pixels, then one score per class
(already a probability). `head_classes` is the one place that reads the class count off it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import BadInputError

HEADS = ("yolov8",)
PRE_NMS = 3000  # candidates kept (by score) before NMS, as Ultralytics' max_nms bounds its work


def head_classes(shape: Sequence[Any], name: str = "the model's first output") -> int:
    """The class count of a `(batch, 4 + classes, anchors)` head; a one-line error for anything else.
    Only the rows must be static: the batch and the anchors may be dynamic dimensions."""
    dims = list(shape)
    if len(dims) != 3 or (isinstance(dims[0], int) and dims[0] < 1) or not isinstance(dims[1], int) \
            or dims[1] < 5:
        raise BadInputError(f"{name} has shape {dims}: a yolov8 detection head is (batch, 4 + classes, "
                            "anchors), rows cx, cy, w, h, then one score per class ([detect] head)")
    return dims[1] - 4


def head_rows(output: np.ndarray, classes: int | None = None, image: int = 0) -> np.ndarray:
    """One image's head as (anchors, 4 + classes)."""
    count = head_classes(np.shape(output), "the detection head")
    if classes is not None and classes != count:
        raise BadInputError(f"the detection head has {count} classes, not {classes}")
    return np.asarray(output[image], np.float32).T


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (the ONNX NonMaxSuppression rule): indices kept, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i] for i in range(4))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        overlap = width * height
        union = areas[best] + areas[rest] - overlap
        iou = np.divide(overlap, union, out=np.zeros_like(overlap), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def detect(output: np.ndarray, *, score_threshold: float, iou_threshold: float, max_detections: int,
           classes: int | None = None, multi_label: bool = False, image: int = 0) -> dict[str, np.ndarray]:
    """Boxes (K, 4) x1 y1 x2 y2 in input pixels, scores (K,) and classes (K,), best first, of the
    batch's `image`.

    NMS is per class (a circle does not suppress an overlapping rectangle). `multi_label`
    keeps every class above the threshold for an anchor, as mAP evaluation does; deployment
    keeps each anchor's best class."""
    rows = head_rows(output, classes, image)
    cxcywh, probabilities = rows[:, :4], rows[:, 4:]
    wanted = probabilities > score_threshold
    if not multi_label:  # each anchor's best class (all of them on an exact tie, as the graph's NMS)
        wanted &= probabilities == probabilities.max(1, keepdims=True)
    anchor, label = np.nonzero(wanted)
    score = probabilities[anchor, label]
    finite = np.isfinite(score) & np.isfinite(cxcywh[anchor]).all(1)
    anchor, label, score = anchor[finite], label[finite], score[finite]
    if len(score) > PRE_NMS:
        top = np.argsort(-score, kind="stable")[:PRE_NMS]
        anchor, label, score = anchor[top], label[top], score[top]
    centre, size = cxcywh[anchor, :2], cxcywh[anchor, 2:]
    boxes = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    # Per-class NMS in one pass: each class's boxes moved apart by more than any box spans (in
    # float64, so the shift costs no precision of the boxes).
    offset = (label.astype(np.float64) * (float(np.abs(boxes).max(initial=0.0)) * 2 + 1))[:, None]
    keep = nms(boxes.astype(np.float64) + offset, score, iou_threshold)[:max_detections]
    return {"boxes": boxes[keep], "scores": score[keep].astype(np.float32),
            "classes": label[keep].astype(np.int64)}


def detect_batch(output: np.ndarray, **settings: Any) -> dict[str, np.ndarray]:
    """`detect` for every image of a batch, as one list: boxes, scores, classes, and `batch` (the
    image each detection belongs to), as ONNX NonMaxSuppression indexes its selections."""
    found = [detect(output, image=i, **settings) for i in range(len(output))]
    return {**{key: np.concatenate([f[key] for f in found]) for key in ("boxes", "scores", "classes")},
            "batch": np.concatenate([np.full(len(f["scores"]), i, np.int64) for i, f in enumerate(found)])}


def graph_detections(outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same flat list from the fixed-size outputs of NMS in the graph (det_boxes (B, M, 4),
    det_scores, det_classes (B, M), num_dets (B, 1)): each image's first num_dets rows."""
    counts = np.asarray(outputs["num_dets"]).reshape(-1).astype(np.int64)
    take = lambda name, dtype: np.concatenate(  # noqa: E731
        [np.asarray(outputs[name], dtype)[i, :n] for i, n in enumerate(counts)])
    return {"boxes": take("det_boxes", np.float32).reshape(-1, 4), "scores": take("det_scores", np.float32),
            "classes": take("det_classes", np.int64),
            "batch": np.concatenate([np.full(n, i, np.int64) for i, n in enumerate(counts)])}


def letterbox_geometry(width: int, height: int, size: Sequence[int]) -> tuple[float, int, int, int, int]:
    """How an image of width x height fits a (height, width) input, aspect kept, padded evenly:
    (scale, new width, new height, left pad, top pad). One rule for the pixels and the boxes."""
    target_h, target_w = int(size[0]), int(size[1])
    scale = min(target_w / width, target_h / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, new_w, new_h, (target_w - new_w) // 2, (target_h - new_h) // 2


def to_image_pixels(boxes: np.ndarray, width: int, height: int, pre: Mapping[str, Any]) -> np.ndarray:
    """Boxes in the model's input pixels moved back onto the original image (undoing the letterbox
    or the resize and centre crop the manifest records), clipped to it."""
    if pre.get("resize_mode") == "letterbox":
        scale, _, _, left, top = letterbox_geometry(width, height, pre["crop"])
    else:
        scale = pre["resize"] / min(width, height)
        crop_h, crop_w = pre["crop"]
        left = -((round(width * scale) - crop_w) // 2)
        top = -((round(height * scale) - crop_h) // 2)
    moved = (np.asarray(boxes, np.float32) - np.asarray([left, top, left, top], np.float32)) / scale
    return np.clip(moved, 0, [width, height, width, height]).astype(np.float32)
