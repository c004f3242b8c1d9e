"""Run a profile's stages in order, checking every output against the reference."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter

from edgepipe.artifact import Artifact, StageReport
from edgepipe.backends import Runner, get_backend
from edgepipe.config import AccuracyBudget
from edgepipe.errors import GateFailedError
from edgepipe.parity import ParityReport, compare_outputs
from edgepipe.stages import STAGES, BuildContext


@dataclass(frozen=True)
class PipelineResult:
    stages: list[StageReport]
    portable: Artifact  # the last ONNX model, kept in the bundle for rebuilds on device
    deployed: Artifact  # the backend artifact
    parity: ParityReport  # deployed artifact vs the reference
    budget: AccuracyBudget  # what the deployed artifact was held to


def runner_for(artifact: Artifact, ctx: BuildContext, quantized: bool = False) -> Runner:
    """Intermediate ONNX runs in ONNX Runtime; a backend artifact in its backend.

    Float intermediates run in ONNX Runtime exactly as written (no optimizations).
    Quantized ones run in the target's backend with its optimizations, so QDQ pairs
    execute as the int8 kernels the device uses rather than as float fake-quantization
    (which kernels saturate on which CPU differs between runtimes).
    """
    precision = getattr(ctx.profile.stage_settings.get("lower"), "precision", "f32")
    backend = get_backend(ctx.target.backend)
    if artifact.format == "onnx" and quantized:
        return backend.onnx_runner(artifact.path, artifact.inputs, ctx.target.runtime, precision)
    if artifact.format == "onnx":
        from edgepipe.backends.onnxruntime import OnnxRuntimeRunner, OnnxRuntimeRuntimeSettings

        return OnnxRuntimeRunner(artifact.path, artifact.inputs, OnnxRuntimeRuntimeSettings(),
                                 level="disabled")
    return backend.runner(artifact, ctx.target.runtime, precision)


def outputs_of(artifact: Artifact, ctx: BuildContext, quantized: bool) -> list[dict]:
    with runner_for(artifact, ctx, quantized) as runner:
        return [runner.infer(feed) for feed in ctx.reference.inputs]


def _compare(reference: list[dict], outputs: list[dict], budget: AccuracyBudget) -> ParityReport:
    return compare_outputs(reference, outputs, budget.atol or 0.0, budget.rtol or 0.0)


def run_stages(ctx: BuildContext,
               on_stage: Callable[[StageReport], None] = lambda report: None) -> PipelineResult:
    """Run every stage; fail (exit 1) as soon as one exceeds its accuracy budget.

    Float stages are held to the profile's budget against the source model. A lossy
    stage (int8) holds itself to its own budget on evaluation data; every stage after
    it is held to the lossy stage's `parity_budget` against the lossy stage's outputs,
    so lowering cannot change what was measured. Parity against the source model is
    recorded for every stage.
    """
    budget = ctx.profile.accuracy
    model = Artifact(ctx.source.path, "onnx" if ctx.source.kind == "onnx" else "torch",
                     ctx.inputs, ())
    portable: Artifact | None = None
    reports: list[StageReport] = []
    parity: ParityReport | None = None
    anchor, anchor_name = ctx.reference.outputs, "the source model"
    quantized = False
    for index, name in enumerate(ctx.profile.stages):
        stage = STAGES[name]()
        settings = ctx.profile.stage_settings[name]
        output = ctx.work_dir / f"{index:02d}-{name}.onnx"
        started = perf_counter()
        outcome = stage.run(model, settings, ctx, output)
        seconds = perf_counter() - started
        lossy = getattr(stage, "lossy", False)
        quantized = quantized or getattr(stage, "int8", False)
        outputs = outputs_of(outcome.artifact, ctx, quantized)
        if lossy:
            budget = stage.parity_budget(settings, budget)
        parity = _compare(ctx.reference.outputs, outputs, budget)
        report = StageReport(name, outcome.artifact.path.name, seconds, parity,
                             outcome.metrics, outcome.warnings)
        violations = [] if lossy else _compare(anchor, outputs, budget).violations(budget)
        if lossy:
            anchor, anchor_name = outputs, f"the '{name}' stage's output"
        if violations and budget.on_exceed == "warn":
            report.warnings.append("accuracy budget exceeded: " + "; ".join(violations))
        reports.append(report)
        on_stage(report)
        if violations and budget.on_exceed == "fail":
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise GateFailedError(
                f"stage '{name}' exceeds the accuracy budget of profile '{ctx.profile.name}' "
                f"against {anchor_name} on {ctx.reference.origin}: {violations[0]}{more}"
            )
        if outcome.artifact.format == "onnx":
            portable = outcome.artifact
        model = outcome.artifact
    assert portable is not None and parity is not None  # guaranteed by validate_stage_order
    return PipelineResult(reports, portable, model, parity, budget)
