"""Lower: hand the final ONNX model to the target's backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepipe import postprocess
from edgepipe.artifact import Artifact
from edgepipe.backends import get_backend
from edgepipe.backends.base import LowerHints
from edgepipe.errors import BadInputError
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, StageOutcome

MANIFEST_DETAIL = ("engine", "tflite")


def example_args(ctx: BuildContext) -> tuple:
    """The first reference sample as torch tensors, for converters that trace a torch source."""
    if ctx.source.module is None or not ctx.reference.inputs:
        return ()
    import torch

    feed = ctx.reference.inputs[0]
    return tuple(torch.from_numpy(feed[spec.name].copy()) for spec in ctx.inputs)


class LowerSettings(StrictModel):
    """How to lower is the target's [lower] table; the profile only picks the float precision."""

    precision: Literal["f32", "f16", "bf16"] = Field(
        "f32", description="float precision the backend runs at (int8 comes from the quantize stage)")


class LowerStage:
    name = "lower"
    Settings = LowerSettings

    def run(self, model: Artifact, settings: LowerSettings, ctx: BuildContext,
            output: Path) -> Iterator[StageOutcome]:
        backend = get_backend(ctx.target.backend)
        if settings.precision not in backend.precisions:
            raise BadInputError(f"profile '{ctx.profile.name}': [lower] precision '{settings.precision}' "
                                f"is not available on backend {backend.name} "
                                f"(available: {', '.join(backend.precisions)})")
        post = postprocess.record(ctx, model)
        module = ctx.source.module
        if post and post["nms"] == "graph":
            model = postprocess.with_nms(model, post, ctx.work_dir / "postprocess-nms.onnx",
                                         backend.name)
            module = None  # TFLite: convert this ONNX (onnx2tf), not the PyTorch module without the NMS
        hints = LowerHints(shape_ranges=ctx.shape_ranges, model_name=ctx.source.name,
                           source_kind=ctx.source.kind, source_module=module,
                           example_args=example_args(ctx), stages=tuple(ctx.profile.stages),
                           work_dir=ctx.work_dir)
        artifact, warnings, facts = backend.lower(model, ctx.target.lower, ctx.target.runtime,
                                                  ctx.bundle_dir, settings.precision, hints)
        # Backend detail the manifest carries under `backend`: TensorRT's engine plan,
        # TFLite's converter route and I/O record.
        detail = {key: facts.pop(key) for key in MANIFEST_DETAIL if key in facts}
        yield StageOutcome(artifact=artifact, warnings=warnings,
                            metrics={"backend": backend.name, **backend.runtime_versions(),
                                     "precision": settings.precision, "runtime_reports": facts,
                                     **detail, **({"postprocess": post} if post else {})})
