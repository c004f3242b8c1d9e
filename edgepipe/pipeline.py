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


def runner_for(artifact: Artifact, ctx: BuildContext) -> Runner:
    """Intermediate ONNX runs in ONNX Runtime exactly as written; a backend artifact in its backend."""
    if artifact.format == "onnx":
        from edgepipe.backends.onnxruntime import OnnxRuntimeRunner, OnnxRuntimeRuntimeSettings

        return OnnxRuntimeRunner(artifact.path, artifact.inputs, OnnxRuntimeRuntimeSettings(),
                                 level="disabled")
    return get_backend(ctx.target.backend).runner(artifact, ctx.target.runtime)


def check_parity(artifact: Artifact, ctx: BuildContext, budget: AccuracyBudget) -> ParityReport:
    with runner_for(artifact, ctx) as runner:
        outputs = [runner.infer(feed) for feed in ctx.reference.inputs]
    return compare_outputs(ctx.reference.outputs, outputs, budget.atol or 0.0, budget.rtol or 0.0)


def run_stages(ctx: BuildContext,
               on_stage: Callable[[StageReport], None] = lambda report: None) -> PipelineResult:
    """Run every stage; fail (exit 1) as soon as one exceeds the profile's accuracy budget."""
    budget = ctx.profile.accuracy
    model = Artifact(ctx.source.path, "onnx" if ctx.source.kind == "onnx" else "torch",
                     ctx.inputs, ())
    portable: Artifact | None = None
    reports: list[StageReport] = []
    parity: ParityReport | None = None
    for index, name in enumerate(ctx.profile.stages):
        stage = STAGES[name]()
        output = ctx.work_dir / f"{index:02d}-{name}.onnx"
        started = perf_counter()
        outcome = stage.run(model, ctx.profile.stage_settings[name], ctx, output)
        seconds = perf_counter() - started
        if getattr(stage, "lossy", False):
            budget = stage.parity_budget(ctx.profile.stage_settings[name], budget)
        parity = check_parity(outcome.artifact, ctx, budget)
        report = StageReport(name, outcome.artifact.path.name, seconds, parity,
                             outcome.metrics, outcome.warnings)
        violations = parity.violations(budget)
        if violations and budget.on_exceed == "warn":
            report.warnings.append("accuracy budget exceeded: " + "; ".join(violations))
        reports.append(report)
        on_stage(report)
        if violations and budget.on_exceed == "fail":
            more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
            raise GateFailedError(
                f"stage '{name}' exceeds the accuracy budget of profile '{ctx.profile.name}' "
                f"on {ctx.reference.origin}: "
                f"{violations[0]}{more}"
            )
        if outcome.artifact.format == "onnx":
            portable = outcome.artifact
        model = outcome.artifact
    assert portable is not None and parity is not None  # guaranteed by validate_stage_order
    return PipelineResult(reports, portable, model, parity, budget)
