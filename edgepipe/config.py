"""Targets (where a model runs) and profiles (how hard to optimize it), loaded from TOML.

Built-in files live in the repository's top-level `targets/` and `profiles/`
folders and are copied into the wheel as `edgepipe/_data/`; users may pass a path
to their own TOML file wherever a name is accepted.
"""

from __future__ import annotations

import platform
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from edgepipe.errors import BadInputError
from edgepipe.quantization.scheme import Int8Scheme
from edgepipe.settings import StrictModel, describe_validation_error

PACKAGE_ROOT = Path(__file__).resolve().parent


def builtin_dir(kind: Literal["targets", "profiles"]) -> Path:
    """Where the built-in TOML files are: in the wheel, else in the source checkout."""
    packaged = Path(str(resources.files("edgepipe"))) / "_data" / kind
    if packaged.is_dir():
        return packaged
    return PACKAGE_ROOT.parent / kind


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise BadInputError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: not UTF-8 text, so not a TOML file") from None
    except OSError as exc:
        raise BadInputError(f"{path}: cannot read: {exc.strerror}") from None


def _validate(model: type[BaseModel], data: dict[str, Any], source: Path, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, str(source), prefix)) from None


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml") or "/" in name or "\\" in name


# --------------------------------------------------------------------------- targets


class DeviceFacts(StrictModel):
    """What is known about the device; informative, recorded in the manifest."""

    kind: Literal["cpu", "gpu", "npu"] = "cpu"
    isa: str = "any"
    notes: str = ""


class EnergySettings(StrictModel):
    meter: str = "none"


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


_DEFAULT_INT8 = Int8Scheme()


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
        }


def load_target_file(path: Path) -> Target:
    from edgepipe.backends import backend_names, get_backend

    raw = _validate(TargetFile, read_toml(path), path)
    if raw.backend not in backend_names():
        raise BadInputError(
            f"{path}: key 'backend': unknown backend '{raw.backend}' "
            f"(known: {', '.join(backend_names())})"
        )
    backend = get_backend(raw.backend)
    lower = _validate(backend.LowerSettings, raw.lower, path, "lower")
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
        runtime=_validate(backend.RuntimeSettings, raw.runtime, path, "runtime"),
        energy=raw.energy,
        source=path,
        int8=int8,
    )


def list_targets() -> list[Target]:
    return [load_target_file(p) for p in sorted(builtin_dir("targets").glob("*.toml"))]


def load_target(name: str) -> Target:
    """Resolve a target by name, alias or path to a TOML file."""
    if _looks_like_path(name):
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
    """How `--profile auto` times its candidates: each bundle's run.py in its own process,
    interleaved rounds, median of round medians (DESIGN.md section 7)."""

    rounds: int = Field(3, ge=1)
    runs: int = Field(50, ge=1)
    warmup: int = Field(10, ge=0)
    threads: int | None = Field(None, ge=0, description="None: the target's own setting")


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


_DEFAULT_AUTO = AutoSettings()
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

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stages": list(self.stages),
            "accuracy": self.accuracy.model_dump(mode="json"),
            **({"candidates": list(self.candidates), "auto": self.auto.model_dump(mode="json")}
               if self.candidates else {}),
            **{k: v.model_dump(mode="json") for k, v in self.stage_settings.items()},
        }


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _profile_path(name: str) -> Path:
    if _looks_like_path(name):
        return Path(name)
    path = builtin_dir("profiles") / f"{name}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in builtin_dir("profiles").glob("*.toml"))
        raise BadInputError(f"unknown profile '{name}' (known: {', '.join(known)})")
    return path


def _resolved_profile_data(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise BadInputError(f"{path}: 'extends' forms a cycle")
    data = read_toml(path)
    extends = data.get("extends")
    if extends is None:
        return data
    names = [extends] if isinstance(extends, str) else extends
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadInputError(f"{path}: key 'extends': must be a profile name or path, or a list of them")
    merged: dict[str, Any] = {}
    for parent_name in names:  # later parents win, the file itself wins over all
        parent_path = _profile_path(parent_name)
        if not parent_path.is_absolute() and _looks_like_path(parent_name):
            parent_path = path.parent / parent_name
        parent = _resolved_profile_data(parent_path, (*seen, path.resolve()))
        for key in ("name", "description", "extends"):
            parent.pop(key, None)
        merged = _merge(merged, parent)
    return _merge(merged, data)


def load_profile_file(path: Path) -> Profile:
    from edgepipe.stages import STAGES, validate_stage_order

    data = _resolved_profile_data(path)
    stage_tables = {key: data.pop(key) for key in list(data) if key in STAGES}
    raw = _validate(ProfileFile, data, path)
    unknown = [s for s in raw.stages if s not in STAGES]
    if unknown:
        raise BadInputError(
            f"{path}: key 'stages': unknown stage '{unknown[0]}' (known: {', '.join(STAGES)})"
        )
    problem = validate_stage_order(raw.stages)
    if problem:
        raise BadInputError(f"{path}: key 'stages': {problem}")
    for name, table in stage_tables.items():
        if not isinstance(table, dict):
            raise BadInputError(f"{path}: key '{name}': must be a table")
    stage_settings = {
        name: _validate(STAGES[name].Settings, stage_tables.get(name, {}), path, name)
        for name in (*raw.stages, *(n for n in stage_tables if n not in raw.stages))
    }
    return Profile(
        name=raw.name,
        description=raw.description,
        stages=tuple(raw.stages),
        accuracy=raw.accuracy,
        stage_settings=stage_settings,
        source=path,
        candidates=tuple(raw.candidates),
        auto=raw.auto,
    )


def load_profile(name: str) -> Profile:
    """Resolve a profile by name or path to a TOML file."""
    return load_profile_file(_profile_path(name))


def list_profiles() -> list[Profile]:
    return [load_profile_file(p) for p in sorted(builtin_dir("profiles").glob("*.toml"))]
