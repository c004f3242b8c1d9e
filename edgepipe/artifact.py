"""The data that flows between stages: tensor specs, artifacts and stage reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.parity import ParityReport


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output. `shape` entries are ints, or a name for a dynamic dim."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    layout: str | None = None
    values: str | None = None  # what random samples draw from: "LOW..HIGH" or "A,B" (--input NAME=...)
    # (min, max) of an input built for a range of shapes (--input NAME:MIN/OPT/MAX); `shape` is OPT
    shape_range: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def is_static(self) -> bool:
        return all(isinstance(dim, int) and dim >= 0 for dim in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout, **({"values": self.values} if self.values else {}),
                **({"shape_range": {"min": list(self.shape_range[0]), "max": list(self.shape_range[1])}}
                   if self.shape_range else {})}


@dataclass(frozen=True)
class Artifact:
    """A model file and what is known about it. Stages never modify one in place."""

    path: Path
    format: str  # "torch", "onnx", or a backend's artifact format
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    companion_files: tuple[Path, ...] = ()  # e.g. external data, an IR's .bin
    # What the writer knows and a later stage needs, e.g. the converter route of a .tflite
    # the quantize stage wrote (lowering records it in the manifest).
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageReport:
    """What one stage did: its output file, time, parity against the reference, warnings."""

    stage: str
    output: str
    seconds: float
    parity: ParityReport | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    runner: dict[str, Any] = field(default_factory=dict)  # what ran the output for parity (runtime record)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "output": self.output,
            "seconds": round(self.seconds, 3),
            "parity": self.parity.to_json() if self.parity else None,
            "runner": self.runner,
            "metrics": self.metrics,
            "warnings": self.warnings,
        }


def layout_guess(shape: tuple[int | str, ...]) -> str | None:
    """Name the layout of image-like 4-D inputs; None where a guess would be a lie."""
    if len(shape) != 4:
        return None
    channels_first, channels_last = shape[1], shape[3]
    if channels_first in (1, 3, 4) and channels_last not in (1, 3, 4):
        return "NCHW"
    if channels_last in (1, 3, 4) and channels_first not in (1, 3, 4):
        return "NHWC"
    return None
