"""Calibration: activation ranges computed by streaming samples through ONNX Runtime.

onnxruntime.quantization's calibrators do the work (min-max, entropy, percentile);
what is ours is feeding them in chunks. Their `collect_data` keeps every
intermediate output of every sample it is given until it returns, so one call with
1,000 ImageNet samples holds gigabytes; called chunk by chunk, min-max merges ranges
and the histogram methods merge histograms between chunks, so memory stays flat.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepipe.errors import BackendError, first_line

Method = Literal["minmax", "entropy", "percentile"]
CHUNK = 16


def ort_method(method: Method):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


class _ChunkReader:
    """A CalibrationDataReader over one chunk of an iterator."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _chunks(samples: Iterable[dict[str, np.ndarray]], size: int) -> Iterator[list[dict[str, np.ndarray]]]:
    iterator = iter(samples)
    while chunk := list(islice(iterator, size)):
        yield chunk


def calibrate(model: Path, samples: Iterable[dict[str, np.ndarray]], cache: Path, *, method: Method,
              percentile: float, symmetric: bool) -> dict[str, Any]:
    """Write ONNX Runtime's calibration cache (JSON ranges) for `model`; return counts.

    Returns {"samples": n, "tensors": m}.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    options: dict[str, Any] = {"symmetric": symmetric}
    if method == "percentile":
        options["percentile"] = percentile
    count = 0
    with tempfile.TemporaryDirectory(prefix="edgepipe-calib-") as work:
        try:
            calibrator = create_calibrator(model, None, str(Path(work) / "augmented.onnx"),
                                           calibrate_method=ort_method(method), extra_options=options)
        except Exception as exc:
            raise BackendError(f"onnxruntime cannot prepare {model.name} for calibration: "
                               f"{first_line(exc)}") from None
        for chunk in _chunks(samples, CHUNK):
            calibrator.collect_data(_ChunkReader(chunk))
            count += len(chunk)
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, cache)
    return {"samples": count, "tensors": len(ranges.data)}


def load_ranges(cache: Path) -> dict[str, tuple[float, float]]:
    """Tensor name -> (lowest, highest) from ONNX Runtime's calibration cache."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    data = load_tensors_data(cache)
    return {name: (float(np.asarray(t.range_value[0]).min()), float(np.asarray(t.range_value[1]).max()))
            for name, t in data.items()}
