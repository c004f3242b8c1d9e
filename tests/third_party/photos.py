"""Real photos from packages (models.toml's [[photo]] tables) as ImageNet-style model inputs.

A few dozen photos ship inside packages, not the hundreds an int8 calibration wants, so each
photo gives several views (crops of 50-100 % of its shorter side at random places, some
mirrored), the augmentation ImageNet training uses. Calibration and evaluation views come
from disjoint photos, never from the same one: foolbox's labelled ImageNet validation photos
evaluate, the rest calibrate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.third_party import STORE, catalogue

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def files(use: str) -> list[Path]:
    return [STORE / name for photo in catalogue().get("photo", []) if photo["use"] == use
            for name in photo["files"]]


def missing() -> list[str]:
    return [str(path.relative_to(STORE)) for use in ("calibration", "evaluation") for path in files(use)
            if not path.is_file()]


def imagenet_label(path: Path) -> int | None:
    """foolbox names its photos imagenet_<index>_<class>.jpg."""
    parts = path.stem.split("_")
    return int(parts[-1]) if path.stem.startswith("imagenet_") else None


def _views(path: Path, count: int, size: int, rng: np.random.Generator, normalize: bool) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGB")
    width, height = image.size
    views = []
    for index in range(count):
        side = min(width, height) * (1.0 if index == 0 else rng.uniform(0.5, 1.0))
        left = (width - side) / 2 if index == 0 else rng.uniform(0, width - side)
        top = (height - side) / 2 if index == 0 else rng.uniform(0, height - side)
        view = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        if index and rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(view, np.float32) / 255.0
        if normalize:
            array = (array - IMAGENET_MEAN) / IMAGENET_STD
        views.append(array.transpose(2, 0, 1))
    return views


def dataset(use: str, count: int, *, size: int = 224, seed: int = 0,
            normalize: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3, size, size) float32 views of the `use` photos, and their ImageNet labels where known.

    Views are spread evenly over the photos; the first view of each is its centre crop. Values
    are ImageNet-normalized, or plain 0..1 RGB (`normalize=False`, as YOLO-family models take).
    """
    paths = files(use)
    rng = np.random.default_rng(seed)
    per_photo = [count // len(paths) + (1 if i < count % len(paths) else 0) for i in range(len(paths))]
    arrays, labels = [], []
    for path, n in zip(paths, per_photo, strict=True):
        views = _views(path, n, size, rng, normalize)
        arrays += views
        labels += [imagenet_label(path)] * len(views)
    known = all(label is not None for label in labels)
    return np.stack(arrays), (np.asarray(labels, np.int64) if known else None)


def write_npz(use: str, count: int, path: Path, *, input_name: str = "input", seed: int = 0, size: int = 224,
              normalize: bool = True, labels: bool = True) -> Path:
    """The views as an edgepipe --calib/--eval file: one (1, 3, H, W) sample per row, labels if known
    (and wanted: ImageNet labels mean nothing to a detector)."""
    images, known = dataset(use, count, seed=seed, size=size, normalize=normalize)
    labels_out = known if labels else None
    arrays = {input_name: images[:, None]}
    if labels_out is not None:
        arrays["labels"] = labels_out
    np.savez(path, **arrays)
    return path
