"""TensorRT's calibration cache (`calib.cache`), written from our calibration ranges.

Hand-written because only TensorRT's own calibrators write this file and TensorRT
cannot be installed on build hosts. The format is a header line
`TRT-<NV_TENSORRT_VERSION>-<Calibrator>` and one `tensor: <hex>` line per tensor,
the hex being the big-endian IEEE-754 float32 of scale = amax / 127 (symmetric
int8). With it, a device whose TensorRT predates explicit QDQ support can build an
int8 engine from the float ONNX model plus the cache.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

# The header names a calibrator TensorRT knows; ranges it has no calibrator for (percentile, mse,
# auto's choice) are written under its default, entropy: TensorRT reads the scales either way.
CALIBRATORS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration",
               "percentile": "EntropyCalibration2", "mse": "EntropyCalibration2",
               "median_max": "EntropyCalibration2", "auto": "EntropyCalibration2"}
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def version_code(version: str) -> int:
    """NV_TENSORRT_VERSION for "8.6.1" (8601) or "10.3.0" (100300)."""
    parts = [int(p) for p in ([*version.split("."), "0", "0"])[:3]]
    major, minor, patch = parts
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def symmetric_qdq_scales(model_path: Path) -> dict[str, float]:
    """Activation scales of a QDQ model quantized symmetric int8 (zero point 0), by tensor.

    onnxruntime gives a Conv's output the range of the ReLU after it, so these, not
    the raw calibration ranges, are what the int8 graph uses; the cache must agree.
    """
    from edgepipe.quantization.qdq_params import read_qdq

    return {name: float(params.scale) for name, params in read_qdq(model_path).activations.items()
            if params.scale.size == 1 and params.is_symmetric_int8}


def write_cache(ranges: dict[str, tuple[float, float]], path: Path, *, tensorrt_version: str,
                method: str, qdq_scales: dict[str, float] | None = None) -> dict[str, float]:
    """Write the cache; return the scales written, by tensor name (sorted for reproducibility).

    Scales are amax / 127 from the calibration ranges, replaced by the QDQ model's own
    scale wherever it quantized a tensor symmetrically.
    """
    scales = {name: max(abs(low), abs(high)) / 127.0 for name, (low, high) in ranges.items()}
    scales = dict(sorted({**scales, **(qdq_scales or {})}.items()))
    _write(path, f"TRT-{version_code(tensorrt_version)}-{CALIBRATORS[method]}", scales)
    return scales


def _write(path: Path, header: str, scales: dict[str, float]) -> None:
    lines = [header] + [f"{name}: {struct.pack('>f', scale).hex()}" for name, scale in scales.items()]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def read_cache(path: Path) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}) from a cache file; raises ValueError on a malformed one."""
    lines = path.read_text(encoding="ascii").splitlines()
    if not lines or not _HEADER.match(lines[0]):
        raise ValueError(f"{path}: not a TensorRT calibration cache (header {lines[:1]})")
    scales = {}
    for line in lines[1:]:
        name, _, value = line.rpartition(": ")
        if not name or len(value) != 8:
            raise ValueError(f"{path}: malformed line {line!r}")
        scales[name] = struct.unpack(">f", bytes.fromhex(value))[0]
    return lines[0], scales


def restrict_cache(path: Path, keep: set[str]) -> int:
    """Keep only the tensors in `keep` (those the QDQ model quantizes); return how many remain.

    For TensorRT 8.x's implicit int8: a tensor with a scale may run int8, one without stays
    in float. Layers the quantize stage kept in float (fallback) must not regain a scale.
    """
    header, scales = read_cache(path)
    kept = {name: scale for name, scale in sorted(scales.items()) if name in keep}
    _write(path, header, kept)
    return len(kept)
