"""Detection evaluation data (`--eval FOLDER`): images with labelled boxes, in the two layouts
detector users already have.

- COCO: `instances.json` (or exactly one `annotations/instances*.json`) beside the images
  (or an `images/` folder); `file_name` is relative to either.
- YOLO (Ultralytics): `images/` and `labels/` folders, one `labels/<name>.txt` per image with
  `class cx cy w h` per line, normalised to the image; an image without a label file has no
  objects. Class names, where wanted, in `classes.txt` (one per line).

Boxes are moved into the model's input frame by the same geometry that letterboxes the pixels
(`runtime.detection.letterbox_geometry`), so the mAP is computed where the model predicts.
IoU is unchanged by a uniform scale and shift, so mAP over all box sizes is the same as in the
original image's pixels (COCO's small/medium/large split is not, and is not reported).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.data.preprocessing import ImagePreprocessing, ResolvedPreprocessing, image_files, resolve
from edgepipe.errors import BadInputError
from edgepipe.runtime.detection import letterbox_geometry
from edgepipe.runtime.feeds import image_size
from edgepipe.settings import read_toml, validate_as

COCO_NAME = "instances.json"


@dataclass(frozen=True)
class GroundTruth:
    """One image's labelled boxes in the model's input pixels: x1 y1 x2 y2, class index, crowd."""

    boxes: np.ndarray  # (K, 4) float32
    classes: np.ndarray  # (K,) int64
    crowd: np.ndarray  # (K,) bool: COCO's iscrowd regions, neither matched nor missed


@dataclass(frozen=True)
class DetectionSet:
    """A detection data set, read lazily: (image, ground truth) pairs in a fixed order."""

    origin: str
    layout: str  # coco | yolo
    classes: tuple[str, ...] | None  # names by class index, where the data set has them
    class_count: int
    preprocessing: ResolvedPreprocessing
    items: list[tuple[Path, np.ndarray, np.ndarray, np.ndarray]]  # file, boxes xywh (pixels), classes, crowd

    def samples(self, spec: TensorSpec, limit: int) -> Iterator[tuple[dict[str, np.ndarray], GroundTruth]]:
        batch = int(spec.shape[0])
        if batch != 1:
            raise BadInputError(f"detection --eval data needs a batch of 1; input '{spec.name}' has "
                                f"{batch} (for a dynamic batch give OPT batch 1, e.g. --input "
                                f"{spec.name}:1x.../1x.../8x...)")
        for path, xywh, classes, crowd in self.items[:limit]:
            array = self.preprocessing.image_to_array(path)[None]
            width, height = image_size(path)
            boxes = _to_input_frame(xywh, width, height, self.preprocessing)
            # A box with no area in the input (zero-sized, or cut off by a centre crop) is one no
            # detector can find: it would only count as a miss.
            seen = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            yield {spec.name: array}, GroundTruth(boxes[seen], classes[seen], crowd[seen])


def _to_input_frame(xywh: np.ndarray, width: int, height: int, pre: ResolvedPreprocessing) -> np.ndarray:
    """x y w h in image pixels to x1 y1 x2 y2 in input pixels (letterboxed or resized and cropped)."""
    if pre.letterbox:
        scale, _, _, left, top = letterbox_geometry(width, height, pre.crop)
    else:
        scale = pre.resize / min(width, height)
        left = -((round(width * scale) - pre.crop[1]) // 2)
        top = -((round(height * scale) - pre.crop[0]) // 2)
    boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) * scale
    boxes += np.asarray([left, top, left, top], np.float32)
    return np.clip(boxes, 0, [pre.crop[1], pre.crop[0]] * 2).astype(np.float32)


def is_detection_set(path: Path) -> bool:
    return path.is_dir() and (_coco_file(path) is not None or ((path / "images").is_dir()
                                                               and (path / "labels").is_dir()))


def _coco_file(folder: Path) -> Path | None:
    if (folder / COCO_NAME).is_file():
        return folder / COCO_NAME
    annotations = folder / "annotations"
    found = sorted(annotations.glob("instances*.json")) if annotations.is_dir() else []
    if len(found) > 1:
        raise BadInputError(f"--eval {folder}: {len(found)} annotation files in annotations/ "
                            f"({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def _declared(folder: Path, preprocess: ImagePreprocessing | None) -> ImagePreprocessing:
    for sidecar in (folder / "preprocess.toml", folder / "images" / "preprocess.toml"):
        if sidecar.is_file():
            return validate_as(ImagePreprocessing, read_toml(sidecar), str(sidecar))
    return preprocess or ImagePreprocessing()


def open_detection_set(folder: Path, spec: TensorSpec, preprocess: ImagePreprocessing | None) -> DetectionSet:
    pre = resolve(_declared(folder, preprocess), spec, detection=True)
    coco = _coco_file(folder)
    if coco is not None:
        return _read_coco(folder, coco, pre)
    return _read_yolo(folder, pre)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadInputError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _read_coco(folder: Path, path: Path, pre: ResolvedPreprocessing) -> DetectionSet:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"--eval {path}: unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--eval {path}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise BadInputError(f"--eval {path}: a COCO file is one JSON object with images, annotations "
                            "and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BadInputError(f"--eval {path}: '{key}' missing or not a list")
    try:
        category_ids = sorted({int(c["id"]) for c in data["categories"]})
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        images = {int(i["id"]): str(i["file_name"]) for i in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"--eval {path}: an image or category without a valid {exc}") from None
    if not category_ids:
        raise BadInputError(f"--eval {path}: no categories")
    index = {cid: position for position, cid in enumerate(category_ids)}
    per_image: dict[int, list[tuple[list[float], int, bool]]] = {image_id: [] for image_id in images}
    for number, annotation in enumerate(data["annotations"]):
        where = f"--eval {path}: annotation {number}"
        if not isinstance(annotation, dict):
            raise BadInputError(f"{where} is not an object")
        image_id, category = annotation.get("image_id"), annotation.get("category_id")
        if image_id not in per_image:
            raise BadInputError(f"{where} names image {image_id!r}, which 'images' does not list")
        if category not in index:
            raise BadInputError(f"{where} names category {category!r}, which 'categories' does not list")
        box = annotation.get("bbox")
        if not isinstance(box, list) or len(box) != 4:
            raise BadInputError(f"{where}: 'bbox' must be [x, y, width, height]")
        xywh = [_number(v, f"{where} bbox") for v in box]
        if xywh[2] < 0 or xywh[3] < 0:
            raise BadInputError(f"{where}: bbox {box} has a negative size")
        per_image[image_id].append((xywh, index[category], bool(annotation.get("iscrowd", 0))))
    items = []
    for image_id in sorted(images):
        file = _image_path(folder, images[image_id], path)
        boxes = per_image[image_id]
        items.append((file, np.asarray([b for b, _, _ in boxes], np.float32).reshape(-1, 4),
                      np.asarray([c for _, c, _ in boxes], np.int64),
                      np.asarray([k for _, _, k in boxes], bool)))
    if not items:
        raise BadInputError(f"--eval {path}: no images")
    return DetectionSet(f"{len(items)} images with COCO boxes {folder}", "coco",
                        tuple(names[cid] for cid in category_ids), len(category_ids), pre, items)


def _image_path(folder: Path, name: str, annotations: Path) -> Path:
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts:
        raise BadInputError(f"--eval {annotations}: file_name '{name}' leaves the data set's folder")
    for base in (folder, folder / "images"):
        if (base / relative).is_file():
            return base / relative
    raise BadInputError(f"--eval {annotations}: image '{name}' not found in {folder} or {folder / 'images'}")


def _read_yolo(folder: Path, pre: ResolvedPreprocessing) -> DetectionSet:
    images = image_files(folder / "images")
    if not images:
        raise BadInputError(f"--eval {folder}: images/ holds no images")
    names = None
    if (folder / "classes.txt").is_file():
        lines = (folder / "classes.txt").read_text(encoding="utf-8", errors="replace").splitlines()
        names = tuple(line.strip() for line in lines if line.strip())
    items, largest = [], -1
    for image in images:
        label = (folder / "labels" / image.relative_to(folder / "images")).with_suffix(".txt")
        rows = []
        if label.is_file():
            text = label.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                fields = line.split()
                try:
                    values = [float(v) for v in fields]
                except ValueError:
                    values = []
                if len(values) != 5 or not values[0].is_integer() or values[0] < 0 \
                        or not all(math.isfinite(v) for v in values) or min(values[3:]) < 0:
                    raise BadInputError(f"--eval {label}:{number}: expected 'class cx cy w h' (class an "
                                        f"integer, the rest normalised to the image), found '{line.strip()}'")
                rows.append(values)
        width, height = image_size(image)
        array = np.asarray(rows, np.float64).reshape(-1, 5)
        xywh = np.stack([(array[:, 1] - array[:, 3] / 2) * width, (array[:, 2] - array[:, 4] / 2) * height,
                         array[:, 3] * width, array[:, 4] * height], 1).astype(np.float32)
        classes = array[:, 0].astype(np.int64)
        largest = max(largest, int(classes.max(initial=-1)))
        items.append((image, xywh, classes, np.zeros(len(classes), bool)))
    count = len(names) if names else largest + 1
    if names and largest >= len(names):
        raise BadInputError(f"--eval {folder}: class {largest} in labels/, but classes.txt names "
                            f"{len(names)}")
    return DetectionSet(f"{len(items)} images with YOLO labels {folder}", "yolo", names, max(count, 1), pre,
                        items)
