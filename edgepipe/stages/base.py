"""The Stage protocol, what a stage hands back, and the context a build hands to each stage."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.budget import TIMED, TaskBudget
from edgepipe.config import Profile, Target
from edgepipe.parity import ParityReport
from edgepipe.reference import Reference
from edgepipe.scoring import Scores
from edgepipe.sources import SourceModel


@dataclass(frozen=True)
class BuildContext:
    """Everything a stage may read; stages write only to the paths they are given."""

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
    notices: tuple[str, ...] = ()  # about the build as a whole; reported with the first stage
    # What a long stage is doing now ("quantize: fallback step 3 of 8"), for a terminal's status
    # line; the CLI shows it only on a TTY and never with --json.
    progress: Callable[[str], None] = field(default=lambda message: None)


@dataclass(frozen=True)
class Judgement:
    """What a lossy stage measured of one candidate on evaluation data, for the pipeline to hold
    against the stage's task budget."""

    scores: Scores
    baseline: Scores  # the stage's input model, scored on the same data
    baseline_metric: float | None
    budget: TaskBudget
    against: str  # what the candidate is compared with: "float", "unpruned"
    label: str  # this candidate among the stage's: "ratio 0.5", "3 tensors in float"
    subject: str  # what exceeds the budget: "int8 quantization", "pruning"
    context: str = ""  # after the subject: " (ratio 0.75)", " even with 3 nodes kept in float"
    remedy: str = ""  # what the user can do when no candidate is left
    # Speed-up over the baseline, measured only for a candidate within its accuracy budget
    # (timing costs seconds); None where this host cannot time the target. Judged against
    # `min_speedup` (0: not judged).
    speedup: Callable[[], float | None] | None = None
    min_speedup: float = 0.0
    speed_method: str = TIMED


@dataclass(frozen=True)
class ParityCheck:
    """A named intermediate step (a fuse pass) whose parity the float budget must hold."""

    label: str
    report: ParityReport
    remedy: str = ""


@dataclass
class StageOutcome:
    artifact: Artifact
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    judgement: Judgement | None = None  # lossy stages: every candidate is judged
    checks: list[ParityCheck] = field(default_factory=list)
    # Work only the shipped candidate needs (its latency, the TensorRT cache); the pipeline
    # calls it once it has accepted this candidate.
    complete: Callable[[], None] | None = None


class Stage(Protocol):
    """Artifact in, new artifacts out; never modifies its input, never judges its output.

    `run` yields candidates in the order the stage prefers them (most compressed first);
    the pipeline holds each to its budget and takes the first that keeps it, so a stage's
    remedy (fall back to float, back off a ratio) is just its next candidate. A stage
    whose output is int8 (`int8 = True`) is run by the target's own kernels. A lossy stage
    (`lossy = True`) judges each candidate on task data (`StageOutcome.judgement`) and
    defines `parity_budget(settings, float_budget)`: what every later stage must keep of
    its output, since elementwise float tolerances no longer apply.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]]

    def run(self, model: Artifact, settings: Any, ctx: BuildContext, output: Path) -> Iterator[StageOutcome]:
        ...
