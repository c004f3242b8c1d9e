"""Lower: hand the final ONNX model to the target's backend."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepipe.artifact import Artifact
from edgepipe.backends import get_backend
from edgepipe.backends.base import LowerHints
from edgepipe.errors import BadInputError
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, StageOutcome


class LowerSettings(StrictModel):
    """How to lower is the target's [lower] table; the profile only picks the float precision."""

    precision: Literal["f32", "f16", "bf16"] = Field(
        "f32", description="float precision the backend runs at (int8 comes from the quantize stage)")


class LowerStage:
    name = "lower"
    Settings = LowerSettings

    def run(self, model: Artifact, settings: LowerSettings, ctx: BuildContext,
            output: Path) -> StageOutcome:
        backend = get_backend(ctx.target.backend)
        if settings.precision not in backend.precisions:
            raise BadInputError(f"profile '{ctx.profile.name}': [lower] precision '{settings.precision}' "
                                f"is not available on backend {backend.name} "
                                f"(available: {', '.join(backend.precisions)})")
        hints = LowerHints(shape_ranges=ctx.shape_ranges, model_name=ctx.source.name)
        artifact, warnings, facts = backend.lower(model, ctx.target.lower, ctx.target.runtime,
                                                  ctx.bundle_dir, settings.precision, hints)
        engine = facts.pop("engine", None)  # TensorRT: the engine plan, for the manifest
        return StageOutcome(artifact=artifact, warnings=warnings,
                            metrics={"backend": backend.name, **backend.runtime_versions(),
                                     "precision": settings.precision, "runtime_reports": facts,
                                     **({"engine": engine} if engine else {})})
