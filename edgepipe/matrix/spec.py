"""The matrix file and the device fleet file, validated, and their expansion into cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, model_validator

from edgepipe.errors import BadInputError
from edgepipe.profiler.rounds import DEFAULT_ROUNDS
from edgepipe.settings import StrictModel, describe_validation_error, read_toml


class ModelEntry(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(..., description="model.onnx, file.py:factory, ... (relative to the matrix file)")
    weights: str | None = None
    inputs: list[str] = Field(default_factory=list, description="--input specs")
    calib: str | None = Field(None, description="calibration data, or 'random'")
    eval: str | None = None
    train: str | None = None


class Exclusion(StrictModel):
    """A cell pattern not to build; an unset field matches everything."""

    model: str | None = None
    target: str | None = None
    profile: str | None = None

    def matches(self, model: str, target: str, profile: str) -> bool:
        return all(want is None or want == have for want, have in
                   ((self.model, model), (self.target, target), (self.profile, profile)))


class ProfilingSettings(StrictModel):
    runs: int = Field(50, ge=5, description="per cell and board, split across the rounds")
    warmup: int = Field(10, ge=0)
    rounds: int = Field(DEFAULT_ROUNDS, ge=1, description="fresh processes per cell and board")
    retries: int = Field(2, ge=0, description="extra tries of a device that drops off")


class DeviceEntry(StrictModel):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = Field(..., description="user@device")
    target: str
    port: int | None = Field(None, ge=1, le=65535)
    identity: str | None = None
    ssh_options: list[str] = Field(default_factory=list)
    python: str = "python3"
    energy: str | None = Field(None, description="energy meter on the device; default: the target's")
    max_jobs: int = Field(1, ge=1, description="concurrent benchmarks; 1, since a board running two "
                                               "at once measures nonsense")


def _require_unique(names: list[str], what: str) -> None:
    """Names key the cells, profiles and matrix.json entries: a repeat would overwrite silently."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique: {', '.join(repeated)} repeated")


class FleetFile(StrictModel):
    devices: list[DeviceEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> FleetFile:
        _require_unique([d.name for d in self.devices], "device")
        return self


class MatrixFile(StrictModel):
    models: list[ModelEntry] = Field(..., min_length=1)
    targets: list[str] = Field(..., min_length=1)
    profiles: list[str] = Field(..., min_length=1)
    exclude: list[Exclusion] = Field(default_factory=list)
    cache: str = Field(".edgepipe-cache", description="content-addressed build cache (local or shared mount)")
    devices: str | None = Field(None, description="devices.toml: boards to profile on")
    profiling: ProfilingSettings = ProfilingSettings()

    @model_validator(mode="after")
    def _unique(self) -> MatrixFile:
        _require_unique([m.name for m in self.models], "model")
        return self


@dataclass(frozen=True)
class Cell:
    model: ModelEntry
    target: str
    profile: str

    @property
    def label(self) -> str:
        return f"{self.model.name} / {self.target} / {self.profile}"


@dataclass(frozen=True)
class Matrix:
    path: Path
    spec: MatrixFile
    cells: tuple[Cell, ...]
    devices: tuple[DeviceEntry, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent

    def resolve(self, relative: str | None) -> str | None:
        """Paths in the matrix file are relative to it; `random` and absolute paths stay."""
        if relative is None or relative == "random":
            return relative
        file_part, colon, function = relative.partition(":")
        resolved = (self.folder / Path(file_part).expanduser()).resolve()
        return f"{resolved}{colon}{function}"


def _load(model, path: Path):
    from pydantic import ValidationError

    try:
        return model.model_validate(read_toml(path))
    except ValidationError as exc:
        raise BadInputError(describe_validation_error(exc, str(path), "")) from None


def load_matrix(path: Path, devices: Path | None = None) -> Matrix:
    spec = _load(MatrixFile, path)
    cells = tuple(Cell(model, target, profile) for model in spec.models for target in spec.targets
                  for profile in spec.profiles
                  if not any(e.matches(model.name, target, profile) for e in spec.exclude))
    if not cells:
        raise BadInputError(f"{path}: every cell is excluded")
    fleet_path = devices or (path.parent / spec.devices if spec.devices else None)
    fleet = _load(FleetFile, fleet_path).devices if fleet_path else []
    return Matrix(path.resolve(), spec, cells, tuple(fleet))
