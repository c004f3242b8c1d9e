"""Targets (where a model runs) and the shape of profiles (how hard to optimize it), from TOML.

Profiles are loaded by `edgepipe.profiles`, which knows the stages; this module sits
below the stages and knows none of them.

Built-in files live in the repository's top-level `targets/` and `profiles/`
folders and are copied into the wheel as `edgepipe/_data/`; users may pass a path
to their own TOML file wherever a name is accepted.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from edgepipe.errors import BadInputError
from edgepipe.quantization.scheme import Int8Scheme
from edgepipe.settings import StrictModel, read_toml, validate_as

PACKAGE_ROOT = Path(__file__).resolve().parent


def builtin_dir(kind: Literal["targets", "profiles"]) -> Path:
    """Where the built-in TOML files are: in the wheel, else in the source checkout."""
    packaged = Path(str(resources.files("edgepipe"))) / "_data" / kind
    if packaged.is_dir():
        return packaged
    return PACKAGE_ROOT.parent / kind


def looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or "\\" in name


# --------------------------------------------------------------------------- targets


class DeviceFacts(StrictModel):
    """What is known about the device, recorded in the manifest. `cpu_features` decides things:
    7-bit int8 weights (x86 without VNNI/AMX) and whether this host's timings stand for the device."""

    kind: Literal["cpu", "gpu", "npu"] = "cpu"
    isa: str = "any"
    notes: str = ""
    cpu_features: list[str] | None = Field(
        None, description="the deployment CPU's ISA extensions as /proc/cpuinfo names them "
                          "(avx2, avx512_vnni, amx_int8, asimddp, ...); unset: not known")
    # GPU peaks for the TensorRT int8 speed estimate (trt/estimate.py): dense tensor-core rates.
    fp16_tflops: float | None = Field(None, gt=0, description="dense fp16 tensor-core peak, TFLOPS")
    fp32_tflops: float | None = Field(None, gt=0, description="fp32 peak as TensorRT runs float layers "
                                                              "(TF32 tensor cores where the GPU has them)")
    int8_tops: float | None = Field(None, gt=0, description="dense int8 tensor-core peak, TOPS")
    memory_gbps: float | None = Field(None, gt=0, description="memory bandwidth, GB/s")

    @field_validator("cpu_features")
    @classmethod
    def _known_features(cls, value: list[str] | None) -> list[str] | None:
        from edgepipe.runtime.machine import FEATURES

        unknown = [name for name in value or () if name not in FEATURES]
        if unknown:
            raise ValueError(f"unknown CPU feature '{unknown[0]}' (known: {', '.join(FEATURES)})")
        return value


class EnergySettings(StrictModel):
    meter: str = "none"


class BundleSettings(StrictModel):
    """What goes into the flashable folder beyond what the device runs."""

    portable: bool = Field(False, description="ship model.onnx, the portable model the artifact was "
                                              "lowered from (TensorRT bundles always do)")


class TargetFile(StrictModel):
    name: str
    description: str
    backend: str
    aliases: list[str] = Field(default_factory=list)
    # Aliases that apply only when the build host is one of these machines
    # (platform.machine()); they win over plain aliases: `cpu` is OpenVINO on x86-64.
    host_aliases: dict[str, list[str]] = Field(default_factory=dict)
    default_profile: str = "default"
    device: DeviceFacts = DeviceFacts()
    lower: dict[str, Any] = Field(default_factory=dict)
    runtime: dict[str, Any] = Field(default_factory=dict)
    energy: EnergySettings = EnergySettings()
    int8: Int8Scheme = Int8Scheme()
    bundle: BundleSettings = BundleSettings()


_DEFAULT_INT8 = Int8Scheme()
_DEFAULT_BUNDLE = BundleSettings()


@dataclass(frozen=True)
class Target:
    """A resolved target: its file's facts plus settings validated by its backend."""

    name: str
    description: str
    backend: str
    aliases: tuple[str, ...]
    host_aliases: dict[str, tuple[str, ...]]
    default_profile: str
    device: DeviceFacts
    lower: BaseModel
    runtime: BaseModel
    energy: EnergySettings
    source: Path
    int8: Int8Scheme = _DEFAULT_INT8
    bundle: BundleSettings = _DEFAULT_BUNDLE

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "aliases": list(self.aliases),
            "host_aliases": {k: list(v) for k, v in self.host_aliases.items()},
            "default_profile": self.default_profile,
            "device": self.device.model_dump(mode="json"),
            "lower": self.lower.model_dump(mode="json"),
            "runtime": self.runtime.model_dump(mode="json"),
            "energy": self.energy.model_dump(mode="json"),
            "int8": self.int8.model_dump(mode="json"),
            "bundle": self.bundle.model_dump(mode="json"),
        }


def load_target_file(path: Path) -> Target:
    from edgepipe.backends import backend_names, get_backend

    raw = validate_as(TargetFile, read_toml(path), str(path))
    if raw.backend not in backend_names():
        raise BadInputError(
            f"{path}: key 'backend': unknown backend '{raw.backend}' "
            f"(known: {', '.join(backend_names())})"
        )
    backend = get_backend(raw.backend)
    lower = validate_as(backend.LowerSettings, raw.lower, str(path), "lower")
    int8 = raw.int8
    if hasattr(lower, "tensorrt_version") and "tensorrt_version" not in raw.int8.model_fields_set:
        # calib.cache's header names the device's TensorRT: one fact, stated once in [lower]
        int8 = int8.model_copy(update={"tensorrt_version": lower.tensorrt_version})
    return Target(
        name=raw.name,
        description=raw.description,
        backend=raw.backend,
        aliases=tuple(raw.aliases),
        host_aliases={k: tuple(v) for k, v in raw.host_aliases.items()},
        default_profile=raw.default_profile,
        device=raw.device,
        lower=lower,
        runtime=validate_as(backend.RuntimeSettings, raw.runtime, str(path), "runtime"),
        energy=raw.energy,
        source=path,
        int8=int8,
        bundle=raw.bundle,
    )


def with_device_cpu(target: Target, spec: str | None) -> Target:
    """The target with `--device-cpu` declaring its CPU: "host" (this machine) or a comma list
    of features. The declaration decides 7-bit weights and whether this host may time for it."""
    if spec is None:
        return target
    if target.device.kind != "cpu":
        raise BadInputError(f"--device-cpu: target '{target.name}' runs on a {target.device.kind}, not a CPU")
    if spec.strip() == "host":
        from edgepipe.runtime.machine import cpu_features

        features = cpu_features()
    else:
        features = [name.strip() for name in spec.split(",") if name.strip()]
    try:
        device = DeviceFacts.model_validate({**target.device.model_dump(), "cpu_features": features})
    except ValidationError as exc:
        raise BadInputError(f"--device-cpu: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    return replace(target, device=device)


def list_targets() -> list[Target]:
    return [load_target_file(p) for p in sorted(builtin_dir("targets").glob("*.toml"))]


def load_target(name: str) -> Target:
    """Resolve a target by name, alias or path to a TOML file."""
    if looks_like_path(name):
        return load_target_file(Path(name))
    targets = list_targets()
    for target in targets:
        if target.name == name:
            return target
    host = platform.machine()
    matches = [t for t in targets if host in t.host_aliases.get(name, ())]
    matches = matches or [t for t in targets if name in t.aliases]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        owners = ", ".join(t.name for t in matches)
        raise BadInputError(f"target alias '{name}' is claimed by several targets: {owners}")
    known = sorted({t.name for t in targets} | {a for t in targets for a in (*t.aliases, *t.host_aliases)})
    raise BadInputError(f"unknown target '{name}' (known: {', '.join(known)})")


# --------------------------------------------------------------------------- profiles


class AccuracyBudget(StrictModel):
    """How far a transformed model may drift from the reference before the build fails."""

    # Elementwise |got - ref| <= atol + rtol * |ref| (numpy.allclose), per output;
    # None where only fidelity (cosine) is judged, as after int8 quantization.
    atol: float | None = Field(1e-3, ge=0)
    rtol: float | None = Field(1e-3, ge=0)
    min_cosine: float = Field(0.9999, ge=-1, le=1)
    min_top1_agreement: float = Field(0.0, ge=0, le=1)
    samples: int = Field(8, ge=1, le=10_000)
    seed: int = 0
    on_exceed: Literal["fail", "warn"] = "fail"


class AutoSettings(StrictModel):
    """How `--profile auto` times its candidates: each bundle by the runtime in its own process,
    interleaved rounds, median of round medians (DESIGN.md section 7)."""

    rounds: int = Field(3, ge=1)
    runs: int = Field(50, ge=1)
    warmup: int = Field(10, ge=0)
    threads: int | None = Field(None, ge=0, description="None: the target's own setting")


class DetectSettings(StrictModel):
    """A detector's head and what the bundle does with it: run.py's (or the graph's) decode and NMS,
    recorded in the manifest's `postprocess`; the int8 scheme keeps the head's tail float."""

    head: Literal["auto", "yolov8", "none"] = Field(
        "auto", description="auto: yolov8 when --eval holds labelled boxes (COCO or YOLO layout)")
    nms: Literal["host", "graph"] = Field(
        "host", description="host: the model returns its raw head and run.py decodes it (numpy); graph: "
                            "decode and ONNX NonMaxSuppression appended to the model, fixed-size outputs")
    keep_head_float: bool = Field(True, description="int8: the head's last convolutions and decode "
                                                    "stay float")
    score_threshold: float = Field(0.25, ge=0, le=1)
    iou_threshold: float = Field(0.45, ge=0, le=1, description="per-class NMS")
    max_detections: int = Field(100, ge=1, le=10_000)
    min_float_map50: float = Field(5.0, ge=0, le=100, description="labelled boxes the float model scores "
                                   "less on are refused as mismatched (class order, box format, "
                                   "preprocessing); 0: off")


class ProfileFile(StrictModel):
    name: str
    description: str
    extends: str | list[str] | None = None
    stages: list[str] = Field(default_factory=lambda: ["export", "lower"])
    accuracy: AccuracyBudget = AccuracyBudget()
    # A profile with candidates builds each, times each on this host and ships the
    # fastest that meets its own budget.
    candidates: list[str] = Field(default_factory=list)
    auto: AutoSettings = AutoSettings()
    detect: DetectSettings = DetectSettings()


_DEFAULT_AUTO = AutoSettings()
_DEFAULT_DETECT = DetectSettings()
    # Tables named after a stage ([export], [quantize], ...) are taken out before
    # this model validates the rest, and are checked by the stage's own model.


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    stages: tuple[str, ...]
    accuracy: AccuracyBudget
    stage_settings: dict[str, BaseModel]
    source: Path
    candidates: tuple[str, ...] = ()
    auto: AutoSettings = _DEFAULT_AUTO
    detect: DetectSettings = _DEFAULT_DETECT

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": list(self.stages),
            "accuracy": self.accuracy.model_dump(mode="json"),
            "detect": self.detect.model_dump(mode="json"),
            **({"candidates": list(self.candidates), "auto": self.auto.model_dump(mode="json")}
               if self.candidates else {}),
            **{k: v.model_dump(mode="json") for k, v in self.stage_settings.items()},
        }
