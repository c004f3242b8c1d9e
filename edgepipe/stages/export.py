"""Export: turn the user's model into a checked, normalised ONNX file with static shapes
(except the input axes given a MIN/OPT/MAX range, for runtimes that build for one).

torch sources go through `torch.onnx.export`: the TorchScript-based exporter by
default (opset 17, what TensorRT 8.5 and onnx2tf read best), the dynamo exporter
on request and for `torch.export` programs, which only it accepts. ONNX sources
are copied with their resolved input shapes written in.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepipe import onnx_model
from edgepipe.artifact import Artifact
from edgepipe.errors import BadInputError, first_line
from edgepipe.extras import require
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, StageOutcome


class ExportSettings(StrictModel):
    opset: int = Field(17, ge=11, le=23)
    exporter: Literal["torchscript", "dynamo"] = "torchscript"


class ExportStage:
    name = "export"
    Settings = ExportSettings

    def run(self, model: Artifact, settings: ExportSettings, ctx: BuildContext,
            output: Path) -> Iterator[StageOutcome]:
        notes: list[str] = []
        if ctx.source.kind == "onnx":
            proto = ctx.source.onnx_model
            exporter = "none (ONNX source)"
        else:
            proto, exporter, notes = _export_torch(ctx, settings)
        proto = _finish(proto, ctx, output)
        files = onnx_model.save(proto, output)
        artifact = Artifact(output, "onnx", ctx.inputs, onnx_model.graph_outputs(proto),
                            tuple(files[1:]))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        yield StageOutcome(artifact, metrics={"exporter": exporter, "opset": opset,
                                               "nodes": len(proto.graph.node)}, warnings=notes)


def ranged_axes(ctx: BuildContext) -> dict[str, set[int]]:
    """Input axes given as a MIN/OPT/MAX range (TensorRT profiles): those stay dynamic."""
    return {name: {axis for axis, (low, high) in enumerate(zip(r[0], r[2], strict=True)) if low != high}
            for name, r in ctx.shape_ranges.items() if r[0] != r[2]}


def _finish(proto, ctx: BuildContext, output: Path):
    """Static shapes, tidy graph, inferred shapes, checker: the contract of every later stage."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)  # the source model is shared with the reference: never edit it
    proto = copy
    onnx_model.set_static_input_shapes(proto, ctx.inputs, ranged_axes(ctx))
    proto = onnx_model.normalise(proto)
    proto = onnx_model.infer_shapes_afresh(proto, output)
    if onnx_model.scalar_if_conditions(proto):
        proto = onnx_model.infer_shapes(proto, output)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise BadInputError(f"exported model fails the ONNX checker: {first_line(exc)}") from None
    return proto


def export_module(module, ctx: BuildContext, settings: ExportSettings, output: Path) -> Artifact:
    """Export a module derived from the source (a pruned copy) exactly as the export stage would."""
    proto, _, _ = _export_torch(ctx, settings, module)
    proto = _finish(proto, ctx, output)
    files = onnx_model.save(proto, output)
    return Artifact(output, "onnx", ctx.inputs, onnx_model.graph_outputs(proto), tuple(files[1:]))


def _export_torch(ctx: BuildContext, settings: ExportSettings, module=None):
    import onnx

    torch = require("torch", "exporting a PyTorch model")
    source = ctx.source
    module = source.module if module is None else module
    exporter = settings.exporter
    notes: list[str] = []
    # Each archive kind has one exporter that reads it; the metrics record which ran.
    if source.kind == "exported_program":
        exporter = "dynamo"
    if source.kind == "torchscript":
        exporter = "torchscript"
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter")
    args = tuple(torch.from_numpy(ctx.reference.inputs[0][spec.name]) for spec in ctx.inputs)
    input_names = [spec.name for spec in ctx.inputs]
    output_names = ctx.reference.output_names
    # Every input, in the forward's order, even those with no dynamic axis: the dynamo exporter
    # pairs this mapping's entries with the forward's arguments by position.
    ranged = ranged_axes(ctx)
    dynamic_axes = {spec.name: {axis: f"{spec.name}_{axis}" for axis in sorted(ranged.get(spec.name, ()))}
                    for spec in ctx.inputs} if ranged else None
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as scratch, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = Path(scratch) / "export.onnx"
        try:
            if exporter == "dynamo":
                program = torch.onnx.export(
                    module, args, dynamo=True, opset_version=settings.opset,
                    input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
                    verbose=False)
                program.save(str(path))
            else:
                torch.onnx.export(
                    module, args, str(path), dynamo=False, opset_version=settings.opset,
                    input_names=input_names, output_names=output_names, do_constant_folding=True,
                    dynamic_axes=dynamic_axes)
        except Exception as exc:
            raise BadInputError(f"{source.spec}: cannot export to ONNX ({exporter} exporter, "
                                f"opset {settings.opset}): {first_line(exc)}") from None
        proto = onnx.load(str(path))
    for warning in caught:
        # Deprecation notices about the exporter itself are noise to a user;
        # tracer warnings ("the trace might not generalize") are not.
        if issubclass(warning.category, DeprecationWarning | FutureWarning) \
                or "'dynamic_axes' is not recommended" in str(warning.message):
            continue
        message = first_line(Warning(str(warning.message)), 200)
        if message not in notes:
            notes.append(message)
    return proto, exporter, notes
