"""mAP of detections against labelled boxes, by pycocotools (the COCO reference implementation):
mAP@0.5 and mAP@0.5:0.95 over all box sizes, 100 detections per image, in points (0-100)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edgepipe.extras import require

if TYPE_CHECKING:
    from edgepipe.data.detection_sets import GroundTruth

MAX_DETECTIONS = 100  # COCO's maxDets for the headline numbers


def mean_average_precision(truth: Sequence[GroundTruth], found: Sequence[dict[str, np.ndarray]],
                           class_count: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) in points. Images and boxes as `GroundTruth` and `runtime.detection.detect`
    give them (x1 y1 x2 y2, class index). Classes no image has are left out, as COCOeval does."""
    require("pycocotools", "mAP of detection --eval data")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (gt, det) in enumerate(zip(truth, found, strict=True), 1):
        images.append({"id": image_id})
        for box, cls, crowd in zip(gt.boxes.tolist(), gt.classes.tolist(), gt.crowd.tolist(), strict=True):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(crowd)})
        for box, score, cls in zip(det["boxes"].tolist(), det["scores"].tolist(), det["classes"].tolist(),
                                   strict=True):
            results.append({"image_id": image_id, "category_id": int(cls) + 1, "score": float(score),
                            "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    if not annotations:
        return 0.0, 0.0
    seen = max([a["category_id"] for a in annotations] + [r["category_id"] for r in results])
    categories = [{"id": k + 1, "name": str(k)} for k in range(max(class_count, seen))]
    quiet = io.StringIO()  # pycocotools prints its progress on stdout, where --json writes
    with contextlib.redirect_stdout(quiet):
        ground = COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        ground.createIndex()
        if not results:
            return 0.0, 0.0
        detections = ground.loadRes(results)
        evaluation = COCOeval(ground, detections, "bbox")
        evaluation.params.maxDets = [1, 10, MAX_DETECTIONS]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    map50_95, map50 = (max(float(v), 0.0) * 100.0 for v in evaluation.stats[:2])  # -1: nothing to score
    return map50, map50_95
