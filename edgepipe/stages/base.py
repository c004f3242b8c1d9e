"""The Stage protocol and the context a build hands to each stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.config import Profile, Target
from edgepipe.reference import Reference
from edgepipe.sources import SourceModel


@dataclass(frozen=True)
class BuildContext:
    """Everything a stage may read; stages write only to the path they are given."""

    source: SourceModel
    target: Target
    profile: Profile
    inputs: tuple[TensorSpec, ...]
    reference: Reference
    work_dir: Path  # intermediates: 00-export.onnx, 01-....onnx
    bundle_dir: Path  # the lower stage writes the backend artifact here
    calib: str | None = None  # --calib: path, file.py:fn or "random"
    eval: str | None = None  # --eval: path or file.py:fn
    train: str | None = None  # --train: fine-tuning data for the prune stage
    # --input NAME:MIN/OPT/MAX: optimization-profile ranges for backends that build for a range
    shape_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict)


@dataclass
class StageOutcome:
    artifact: Artifact
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Stage(Protocol):
    """Artifact in, new artifact out; never modifies its input.

    The pipeline times every stage and checks its output against the reference,
    so a stage only transforms. A lossy stage (int8) also defines
    `parity_budget(settings, float_budget)`: the budget it and every later stage
    are held to, since elementwise float tolerances no longer apply. A stage
    whose output holds int8 (`int8 = True`) is run by the target's own kernels.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]

    def run(self, model: Artifact, settings: Any, ctx: BuildContext, output: Path) -> StageOutcome: ...
