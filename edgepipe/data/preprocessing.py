"""Image preprocessing, declared once and recorded in the manifest.

The same declaration turns calibration and evaluation images into tensors at
build time and tells the device how to feed the model, so the two cannot drift
apart: a model calibrated on RGB/255 and fed BGR/1 on the device is wrong silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgepipe.artifact import TensorSpec, layout_guess
from edgepipe.errors import BadInputError
from edgepipe.runtime.feeds import IMAGE_SUFFIXES, image_to_array
from edgepipe.settings import StrictModel


class ImagePreprocessing(StrictModel):
    """What a user declares; anything left out is derived from the model's input."""

    resize: int | None = Field(None, ge=1, description="shorter side before cropping; default: the crop")
    crop: list[int] | None = Field(None, min_length=2, max_length=2, description="[height, width]")
    scale: float = Field(1 / 255, gt=0, description="multiplies the 0-255 pixel values first")
    mean: list[float] = Field(default_factory=lambda: [0.0])
    std: list[float] = Field(default_factory=lambda: [1.0])
    channels: Literal["rgb", "bgr", "gray"] | None = None
    layout: Literal["NCHW", "NHWC"] | None = None
    resize_mode: Literal["crop", "letterbox"] | None = Field(
        None, description="crop: shorter side resized, centre cropped; letterbox: whole image fitted, "
                          "aspect kept, padded (detectors); default: letterbox for detection data")
    pad: float = Field(114, ge=0, le=255, description="letterbox padding, in 0-255 pixel units")


@dataclass(frozen=True)
class ResolvedPreprocessing:
    """Every step spelled out, as recorded in manifest.json for the device."""

    resize: int
    crop: tuple[int, int]
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: str
    layout: str
    dtype: str
    letterbox: bool = False
    pad: float = 114.0

    def to_json(self) -> dict[str, Any]:
        record = {"kind": "image", **asdict(self), "crop": list(self.crop), "mean": list(self.mean),
                  "std": list(self.std)}
        del record["letterbox"], record["pad"]
        if self.letterbox:  # the device's image_to_array reads resize_mode and pad
            return {**record, "resize_mode": "letterbox", "pad": self.pad,
                    "resize_rule": "bilinear, aspect kept, padded evenly"}
        return {**record, "resize_mode": "shorter-side bilinear, then center crop"}

    def image_to_array(self, path: Path) -> np.ndarray:
        """One decoded image as a (C, H, W) or (H, W, C) array, without the batch axis: the
        runtime's implementation, the one the device's run.py applies to camera images."""
        return image_to_array(path, self.to_json())


def _per_channel(values: list[float], channels: int, name: str) -> tuple[float, ...]:
    if len(values) == 1:
        return tuple(values * channels)
    if len(values) != channels:
        raise BadInputError(f"preprocessing '{name}' has {len(values)} values; the input has "
                            f"{channels} channels")
    return tuple(values)


def resolve(declared: ImagePreprocessing, spec: TensorSpec, *,
            detection: bool = False) -> ResolvedPreprocessing:
    """Fill in what the model's input implies; refuse what it cannot take. Detection data is
    letterboxed unless declared otherwise: a centre crop would cut boxes off."""
    if not spec.is_static or len(spec.shape) != 4:
        raise BadInputError(f"input '{spec.name}' has shape {list(spec.shape)}: image data needs a "
                            "static 4-D input (give --input NAME:1x3x224x224)")
    layout = declared.layout or spec.layout or layout_guess(spec.shape)
    if layout is None:
        raise BadInputError(f"input '{spec.name}' {list(spec.shape)}: cannot tell NCHW from NHWC; "
                            "declare [quantize.preprocess] layout")
    _, a, b, c = (int(d) for d in spec.shape)
    channels, height, width = (a, b, c) if layout == "NCHW" else (c, a, b)
    if channels not in (1, 3):
        raise BadInputError(f"input '{spec.name}' has {channels} channels; images give 1 or 3")
    order = declared.channels or ("gray" if channels == 1 else "rgb")
    if (order == "gray") != (channels == 1):
        raise BadInputError(f"preprocessing channels '{order}' does not fit input '{spec.name}' "
                            f"with {channels} channels")
    crop = tuple(declared.crop) if declared.crop else (height, width)
    if crop != (height, width):
        raise BadInputError(f"preprocessing crop {list(crop)} differs from input '{spec.name}' "
                            f"{height}x{width}")
    if np.dtype(spec.dtype).kind != "f":
        raise BadInputError(f"input '{spec.name}' is {spec.dtype}; image preprocessing feeds float inputs")
    return ResolvedPreprocessing(
        resize=declared.resize or min(crop), crop=crop, scale=declared.scale,
        mean=_per_channel(declared.mean, channels, "mean"), std=_per_channel(declared.std, channels, "std"),
        channels=order, layout=layout, dtype=spec.dtype,
        letterbox=declared.resize_mode == "letterbox" or (declared.resize_mode is None and detection),
        pad=declared.pad)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
