"""Run a profile's stages in order and hold every stage to its budget: the one place that does.

Each stage yields candidates and their scores; this module alone decides. Float stages
(export, fuse, lowering of a float model) are held elementwise to the profile's accuracy
budget against the source model, and each fuse pass to the same budget against the pass's
input. A lossy stage
(int8, pruning) is held to its task budget on evaluation data, candidate by candidate,
until one keeps it (the stage's remedy is its next candidate) or none is left (exit 1);
every stage after it is held to the lossy stage's `parity_budget` against its output, so
lowering cannot change what was measured. Parity against the source model is recorded
for every stage. A build for a range of input shapes (--input MIN/OPT/MAX) runs at OPT; every
float stage is also held, on one sample at MIN and one at MAX, to the same budget.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

import numpy as np

from edgepipe.artifact import Artifact, StageReport
from edgepipe.backends import Runner, get_backend
from edgepipe.budget import speed_violation, task_violations
from edgepipe.config import AccuracyBudget
from edgepipe.errors import EdgepipeError, GateFailedError, first_line
from edgepipe.parity import ParityReport, compare_outputs
from edgepipe.reference import RangeReference, range_reference
from edgepipe.stages import STAGES, BuildContext, Stage, StageOutcome


@dataclass(frozen=True)
class PipelineResult:
    stages: list[StageReport]
    portable: Artifact  # the last ONNX model, kept in the bundle for rebuilds on device
    deployed: Artifact  # the backend artifact
    parity: ParityReport  # deployed artifact vs the reference
    budget: AccuracyBudget  # what the deployed artifact was held to


def runner_for(artifact: Artifact, ctx: BuildContext, quantized: bool = False) -> Runner:
    """Intermediate ONNX runs in ONNX Runtime exactly as written; a backend artifact, and any
    quantized candidate, in the target's backend with the device's settings, so QDQ pairs
    execute as the int8 kernels the device uses (which kernels saturate on which CPU
    differs between runtimes)."""
    from edgepipe.backends.onnxruntime import exact_runner

    precision = getattr(ctx.profile.stage_settings.get("lower"), "precision", "f32")
    backend = get_backend(ctx.target.backend)
    if artifact.format == "onnx" and not quantized:
        return exact_runner(artifact.path, artifact.inputs)
    if artifact.format == "onnx" or artifact.format != backend.name:
        return backend.candidate_runner(artifact, ctx.target.runtime, precision)
    return backend.runner(artifact, ctx.target.runtime, precision)


def outputs_of(artifact: Artifact, ctx: BuildContext, quantized: bool,
               ranges: RangeReference | None = None, stage: str = "") -> tuple[list[dict], list[dict], dict]:
    """The artifact's outputs on the reference inputs and at the --input ranges' ends, and the
    runtime's record of how it ran. Failing to run at a range end is the stage's failure."""
    with runner_for(artifact, ctx, quantized) as runner:
        outputs = [runner.infer(feed) for feed in ctx.reference.inputs]
        ends = []
        for label, feed in zip(ranges.labels, ranges.inputs, strict=True) if ranges else ():
            try:
                ends.append(runner.infer(feed))
            except EdgepipeError as exc:
                raise GateFailedError(f"stage '{stage}' fails at the --input range's {label} (the build "
                                      f"runs at OPT): {first_line(exc, 300)}") from None
        return outputs, ends, dict(runner.runtime)


def _compare(reference: list[dict], outputs: list[dict], budget: AccuracyBudget, stage: str) -> ParityReport:
    try:
        return compare_outputs(reference, outputs, budget.atol, budget.rtol)
    except ValueError as exc:  # an output changed shape or count: the stage broke the model's contract
        raise GateFailedError(f"stage '{stage}' changed the model's outputs: {exc}") from None


def _keep(artifact: Artifact, output: Path) -> Artifact:
    """The accepted candidate under the stage's numbered name (00-export.onnx, 03-quantize.xml …)."""
    target = output.with_suffix(artifact.path.suffix)
    if artifact.path == target:
        return artifact
    if artifact.format == "onnx" and artifact.companion_files:
        import onnx

        from edgepipe.onnx_model import save

        files = save(onnx.load(str(artifact.path)), target)
        return Artifact(target, artifact.format, artifact.inputs, artifact.outputs, tuple(files[1:]),
                        artifact.facts)
    shutil.copyfile(artifact.path, target)
    companions = []
    for companion in artifact.companion_files:  # an IR's .bin
        kept = target.with_suffix(companion.suffix)
        shutil.copyfile(companion, kept)
        companions.append(kept)
    return Artifact(target, artifact.format, artifact.inputs, artifact.outputs, tuple(companions),
                    artifact.facts)


def accept(stage: Stage, model: Artifact, settings: object, ctx: BuildContext, output: Path) -> StageOutcome:
    """The stage's first candidate within its task budget; exit 1 when none is. Every verdict
    is recorded in the accepted candidate's metrics (`verdicts`) for the report."""
    accepted = None
    verdicts: list[dict[str, object]] = []
    rejected = None
    with contextlib.closing(stage.run(model, settings, ctx, output)) as candidates:
        for outcome in candidates:
            judged = outcome.judgement
            if judged is None:
                if getattr(stage, "lossy", False):
                    raise AssertionError(f"lossy stage '{stage.name}' yielded a candidate without scores")
                accepted = outcome
                break
            violations = task_violations(judged.baseline, judged.baseline_metric, judged.scores,
                                         judged.budget, judged.against)
            if not violations and judged.speedup is not None and judged.min_speedup > 0:
                speedup = judged.speedup()
                slow = None if speedup is None else speed_violation(speedup, judged.min_speedup,
                                                                    judged.against, judged.speed_method)
                violations = [slow] if slow else []
            verdicts.append({"candidate": judged.label, "violations": violations})
            if not violations:
                outcome.metrics["verdicts"] = verdicts
                accepted = outcome
                break
            rejected = (judged, violations)
    if accepted is not None:
        if accepted.complete is not None:
            accepted.complete()
        return accepted
    if rejected is None:
        raise AssertionError(f"stage '{stage.name}' yielded no candidate")
    judged, violations = rejected
    remedy = f"; {judged.remedy}" if judged.remedy else ""
    raise GateFailedError(f"{judged.subject} exceeds the budget{judged.context}: {'; '.join(violations)}"
                          f"{remedy}")


def _check_range(name: str, ranges: RangeReference, anchor: list[dict], outputs: list[dict],
                 budget: AccuracyBudget) -> None:
    """A stage's output at both ends of the --input ranges, held to the budget it is held to at OPT
    and against the same anchor. Always a failure: a bundle that is right only at OPT would ship
    wrong answers for the shapes it declares it takes (an export that baked the OPT size in)."""
    for label, expected, got in zip(ranges.labels, anchor, outputs, strict=True):
        violations = _compare([expected], [got], budget, name).violations(budget)
        if violations:
            raise GateFailedError(f"stage '{name}' is wrong at the --input range's {label} (the build "
                                  f"runs at OPT): {violations[0]}")


def _check_finite_ends(name: str, ranges: RangeReference | None, outputs: list[dict]) -> None:
    """A lossy stage is judged on evaluation data at OPT, not elementwise; at the range ends it must
    at least give numbers, since its outputs there are what later stages are held to."""
    for label, out in zip(ranges.labels if ranges else (), outputs, strict=True):
        bad = next((key for key, value in out.items()
                    if not np.isfinite(np.asarray(value, np.float64)).all()), None)
        if bad is not None:
            raise GateFailedError(f"stage '{name}' gives non-finite values in output '{bad}' at the --input "
                                  f"range's {label} (the build runs at OPT)")


def _check_steps(outcome: StageOutcome, budget: AccuracyBudget) -> None:
    """A stage's named steps (fuse passes) held to the float budget. Always a failure, even when
    the profile only warns about its stages: a pass that breaks parity is a bug to skip, and the
    message says how."""
    for check in outcome.checks:
        violations = check.report.violations(budget)
        if violations:
            remedy = f"; {check.remedy}" if check.remedy else ""
            raise GateFailedError(f"{check.label} breaks parity: {violations[0]}{remedy}")


def run_stages(ctx: BuildContext,
               on_stage: Callable[[StageReport], None] = lambda report: None) -> PipelineResult:
    """Run every stage; fail (exit 1) as soon as one exceeds its budget."""
    budget = ctx.profile.accuracy
    model = Artifact(ctx.source.path, "onnx" if ctx.source.kind == "onnx" else "torch", ctx.inputs, ())
    portable: Artifact | None = None
    reports: list[StageReport] = []
    parity: ParityReport | None = None
    anchor, anchor_name = ctx.reference.outputs, "the source model"
    ranges = range_reference(ctx.source, ctx.inputs, budget.seed)
    range_anchor = ranges.outputs if ranges else []
    quantized = False
    for index, name in enumerate(ctx.profile.stages):
        stage = STAGES[name]()
        settings = ctx.profile.stage_settings[name]
        output = ctx.work_dir / f"{index:02d}-{name}.onnx"
        started = perf_counter()
        outcome = accept(stage, model, settings, ctx, output)
        artifact = _keep(outcome.artifact, output) if name != "lower" else outcome.artifact
        seconds = perf_counter() - started
        lossy = getattr(stage, "lossy", False)
        quantized = quantized or getattr(stage, "int8", False)
        _check_steps(outcome, budget)
        warnings = [*(ctx.notices if index == 0 else ()), *outcome.warnings]
        outputs, at_ends, ran = outputs_of(artifact, ctx, quantized, ranges, name)
        # In-graph NMS adds outputs the source model has not: parity is judged on the head.
        added = set(outcome.metrics.get("postprocess", {}).get("graph_outputs", ()))
        outputs, at_ends = ([{key: value for key, value in out.items() if key not in added} for out in run]
                            for run in (outputs, at_ends))
        if lossy:
            budget = stage.parity_budget(settings, budget)
            _check_finite_ends(name, ranges, at_ends)
            range_anchor = at_ends
        elif ranges:
            _check_range(name, ranges, range_anchor, at_ends, budget)
        parity = _compare(ctx.reference.outputs, outputs, budget, name)
        report = StageReport(name, artifact.path.name, seconds, parity, outcome.metrics, warnings, ran)
        violations = [] if lossy else _compare(anchor, outputs, budget, name).violations(budget)
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
        if artifact.format == "onnx":
            portable = artifact
        model = artifact
    assert portable is not None and parity is not None  # guaranteed by validate_stage_order
    return PipelineResult(reports, portable, model, parity, budget)
