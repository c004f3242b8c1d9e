"""The engine plan: everything needed to turn the bundle's ONNX into a TensorRT engine.

One plan, three consumers: `build_engine.sh` (trtexec), `run.py --build-engine` and
`edgepipe build --from-bundle` (both the TensorRT Python API in `runtime/runners/tensorrt.py`). It is
stored in the manifest (`backend.engine`), so the three cannot drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

ENGINE_NAME = "model.engine"
ENGINE_RECORD = "model.engine.json"  # who built the engine: TensorRT version, GPU, time
TIMING_CACHE = "timing.cache"
# Files the device writes next to the shipped ones; verify accepts them unlisted.
DEVICE_FILES = (ENGINE_NAME, ENGINE_RECORD, TIMING_CACHE)

Precision = Literal["fp32", "fp16", "int8"]
Int8Mode = Literal["strongly-typed", "calibration-cache"]


@dataclass(frozen=True)
class ShapeRange:
    """An optimization profile for one dynamic input."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class EnginePlan:
    onnx: str  # the file in the bundle the engine is built from
    tensorrt_version: str  # the TensorRT the target runs; the engine must be built with this line
    compute_capability: str | None  # "8.7"; None = whichever GPU builds it
    precision: Precision
    int8_mode: Int8Mode | None = None
    strongly_typed: bool = False
    fp16_flag: bool = False  # weakly typed fp16 (8.x, 10.x; removed in 11.x)
    calibration_cache: str | None = None
    workspace_mib: int = 1024
    dla_core: int | None = None
    gpu_fallback: bool = True
    sparsity: bool = False  # 2:4 weights from the prune stage: sparse tensor cores (Ampere, Orin)
    builder_optimization_level: int | None = None
    shapes: dict[str, ShapeRange] = field(default_factory=dict)
    engine: str = ENGINE_NAME
    timing_cache: str = TIMING_CACHE
    device_files: tuple[str, ...] = DEVICE_FILES

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shapes"] = {name: {k: list(v) for k, v in asdict(r).items()} for name, r in self.shapes.items()}
        data["device_files"] = list(self.device_files)
        return data
