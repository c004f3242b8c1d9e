"""Lower: hand the final ONNX model to the target's backend."""

from __future__ import annotations

from pathlib import Path

from edgepipe.artifact import Artifact
from edgepipe.backends import get_backend
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, StageOutcome


class LowerSettings(StrictModel):
    """Lowering is configured by the target's [lower] table, not by the profile."""


class LowerStage:
    name = "lower"
    Settings = LowerSettings

    def run(self, model: Artifact, settings: LowerSettings, ctx: BuildContext,
            output: Path) -> StageOutcome:
        backend = get_backend(ctx.target.backend)
        artifact, warnings = backend.lower(model, ctx.target.lower, ctx.target.runtime,
                                           ctx.bundle_dir)
        return StageOutcome(artifact=artifact, warnings=warnings,
                            metrics={"backend": backend.name, **backend.runtime_versions()})
