"""What a runner is fed on the device: arrays from .npy/.npz, an image preprocessed as the build
recorded it, or seeded random tensors.

`image_to_array` is the one implementation of the manifest's image preprocessing; the
build uses it too (edgepipe.data.preprocessing), so calibration and device cannot drift.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .detection import letterbox_geometry
from .errors import BackendError, BadInputError, first_line

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
Spec = Mapping[str, Any]


def image_to_array(path: Path, pre: Mapping[str, Any]) -> np.ndarray:
    """One decoded image as a (C, H, W) or (H, W, C) array, without the batch axis, by a
    preprocessing record (resize, crop, scale, mean, std, channels, layout, dtype; `resize_mode`
    "letterbox": the whole image scaled to fit, aspect kept, padded evenly with `pad`, as
    detectors are fed, instead of the shorter side resized and the centre cropped)."""
    try:
        from PIL import Image
    except ImportError:
        raise BackendError("image inputs need Pillow: pip install pillow") from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if pre["channels"] == "gray" else "RGB")
            width, height = image.size
            if pre.get("resize_mode") == "letterbox":
                pixels = _letterbox(image, width, height, pre)
            else:
                pixels = _resize_and_crop(path, image, width, height, pre)
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
        raise BadInputError(f"{path}: unreadable image ({first_line(exc)})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre["channels"] == "bgr":
        pixels = pixels[:, :, ::-1]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    pixels = (pixels * pre["scale"] - mean) / std
    if pre["layout"] == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels.astype(pre["dtype"]))


def _letterbox(image: Any, width: int, height: int, pre: Mapping[str, Any]) -> np.ndarray:
    from PIL import Image

    _, new_w, new_h, left, top = letterbox_geometry(width, height, pre["crop"])
    resized = np.asarray(image.resize((new_w, new_h), Image.Resampling.BILINEAR), np.float32)
    crop_h, crop_w = pre["crop"]
    canvas = np.full((crop_h, crop_w, *resized.shape[2:]), float(pre.get("pad", 114)), np.float32)
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(f"{path}: unreadable image ({first_line(exc)})") from None


def _resize_and_crop(path: Path, image: Any, width: int, height: int, pre: Mapping[str, Any]) -> np.ndarray:
    from PIL import Image

    factor = pre["resize"] / min(width, height)
    image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))),
                         Image.Resampling.BILINEAR)
    crop_h, crop_w = pre["crop"]
    if image.height < crop_h or image.width < crop_w:
        raise BadInputError(f"{path}: {image.width}x{image.height} after resizing to "
                            f"{pre['resize']} is smaller than the crop {crop_w}x{crop_h}")
    left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
    return np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), np.float32)


def read_image(path: Path, specs: Sequence[Spec]) -> dict[str, np.ndarray]:
    """An image fed the way calibration fed it, from the manifest's preprocessing record."""
    pre = specs[0].get("preprocessing") if len(specs) == 1 else None
    if not pre or pre.get("kind") != "image":
        raise BadInputError(f"{path}: this bundle records no image preprocessing; give a .npy/.npz input")
    array = image_to_array(path, pre)[None]
    if not fits(array.shape, specs[0]):
        raise BadInputError(f"{path}: one image gives {list(array.shape)}, the model takes "
                            f"{expected_shape(specs[0])}")
    return {specs[0]["name"]: array}


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz archive; raises what numpy raises for an unreadable file. Shared by
    the build's sample reader, so host and device refuse the same archives."""
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise BadInputError(f"{path}: a single array, not an .npz archive of named arrays")
    with archive:
        arrays = {name: archive[name] for name in archive.files}
    junk = next((name for name, value in arrays.items() if not isinstance(value, np.ndarray)), None)
    if junk is not None:  # numpy hands back the raw bytes of a member that is not .npy
        raise BadInputError(f"{path}: member '{junk}' is not a .npy array")
    return arrays


def fits(shape: Sequence[int], spec: Spec, shapes: Sequence[Any] = ()) -> bool:
    """Whether an input of `shape` is one `spec` takes: its shape (or one of `shapes`), or, for an
    input built for a MIN/OPT/MAX range, any shape inside the recorded range."""
    if list(shape) in [list(spec["shape"]), *shapes]:
        return True
    ends = spec.get("shape_range")
    return bool(ends) and len(shape) == len(ends["min"]) == len(ends["max"]) and all(
        a <= d <= b for a, d, b in zip(ends["min"], shape, ends["max"], strict=True))


def expected_shape(spec: Spec) -> str:
    """What an error says the input takes."""
    ends = spec.get("shape_range")
    return f"{ends['min']} to {ends['max']}" if ends else str(list(spec["shape"]))


def read_arrays(path: Path, specs: Sequence[Spec]) -> dict[str, np.ndarray]:
    """A .npy (single-input models) or .npz of arrays named after the inputs, exactly as the model
    takes them (or, where `device_shape` is given, in the model's own layout)."""
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise BadInputError(f"{path}: the model has {len(specs)} inputs; use a .npz")
            arrays = {specs[0]["name"]: np.load(path, allow_pickle=False)}
        else:
            arrays = load_npz(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"{path}: unreadable ({first_line(exc)})") from None
    feed = {}
    for spec in specs:
        if spec["name"] not in arrays:
            raise BadInputError(f"{path}: no array named '{spec['name']}'")
        array = arrays[spec["name"]]
        device = [spec["device_shape"]] if spec.get("device_shape") else []  # TFLite: the model's own layout
        if array.dtype.name != spec["dtype"] or not fits(array.shape, spec, device):
            raise BadInputError(f"{path}: '{spec['name']}' is {array.dtype.name} {list(array.shape)}, "
                                f"the model expects {spec['dtype']} {expected_shape(spec)}")
        feed[spec["name"]] = array
    return feed


def parse_values(text: str, dtype: str) -> tuple[str, list[float]]:
    """The values an input takes, as declared with `--input NAME=...` and kept in the manifest:
    "LOW..HIGH" (inclusive range) or "A,B,..." (choices; one value: a constant). Random samples
    for an input like a sample rate or a class id must come from its own domain: values the model
    never sees select branches that fail, or measure work it never does."""
    kind = np.dtype(dtype).kind
    number = int if kind in "iub" else float
    try:
        if ".." in text:
            low, high = (number(part) for part in text.split("..", 1))
            if not low <= high:
                raise ValueError
            values = ("range", [low, high])
        else:
            values = ("choice", [number(part) for part in text.split(",")])
    except ValueError:
        raise BadInputError(f"values '{text}' for a {dtype} input: expected LOW..HIGH or A,B,... "
                            f"({'integers' if number is int else 'numbers'})") from None
    if not all(np.isfinite(v) for v in values[1]) or (kind == "b" and not set(values[1]) <= {0, 1}):
        raise BadInputError(f"values '{text}' do not fit a {dtype} input")
    if kind in "iu" and not all(np.iinfo(dtype).min <= v <= np.iinfo(dtype).max for v in values[1]):
        raise BadInputError(f"values '{text}' do not fit a {dtype} input")
    return values


def draw(rng: np.random.Generator, spec: Spec) -> np.ndarray:
    """Seeded values for one input: from its declared values, else standard normal floats and
    {0, 1} integers (valid for any mask or embedding index)."""
    dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
    if spec.get("values"):
        kind, values = parse_values(spec["values"], dtype.name)
        if kind == "choice":
            return np.asarray(rng.choice(np.asarray(values), shape)).astype(dtype)
        if dtype.kind == "f":
            return np.asarray(rng.uniform(values[0], values[1], shape)).astype(dtype)
        return np.asarray(rng.integers(values[0], values[1], shape, endpoint=True)).astype(dtype)
    if dtype.kind == "f":
        return np.asarray(rng.standard_normal(shape)).astype(dtype)
    if dtype.kind in "iub":
        return np.asarray(rng.integers(0, 2, shape)).astype(dtype)
    raise BadInputError(f"input '{spec['name']}': cannot make samples of dtype {dtype}")


def random_inputs(specs: Sequence[Spec], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {spec["name"]: draw(rng, spec) for spec in specs}


def read_feed(path: Path | None, specs: Sequence[Spec], seed: int = 0) -> dict[str, np.ndarray]:
    if path is None:
        return random_inputs(specs, seed)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return read_image(path, specs)
    return read_arrays(path, specs)
