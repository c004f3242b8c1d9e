"""Prune: fewer channels (structured: real speed everywhere) or zeroed weights (unstructured, 2:4).

Structured pruning needs the PyTorch module: channels are removed with
torch-pruning, the smaller model is optionally fine-tuned by distillation from the
unpruned one, then exported again. Unstructured and 2:4 sparsity work on the ONNX
graph, so ONNX-only sources can use them. Every step is scored against the
unpruned model on evaluation data and timed with the target's runtime; a broken
budget fails the build or backs the ratio off.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Annotated, Any, Literal

from pydantic import Field

from edgepipe.artifact import Artifact
from edgepipe.budget import allowed_drop
from edgepipe.config import AccuracyBudget
from edgepipe.data.evaluation import EvalData, eval_data_for
from edgepipe.data.preprocessing import ImagePreprocessing
from edgepipe.data.samples import RANDOM, LabelledSample, SampleSource, open_samples
from edgepipe.errors import BadInputError
from edgepipe.postprocess import is_detector
from edgepipe.pruning import cost, unstructured
from edgepipe.pruning.distill import Batch, FinetuneSettings, batches, distill, taylor_gradients
from edgepipe.pruning.scan import choose_ratios, scan
from edgepipe.pruning.structured import ChannelPlan, Importance, channel_counts, prune_channels
from edgepipe.scoring import Evaluator, Scores
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, Judgement, StageOutcome
from edgepipe.target_run import target_run, time_run

Ratio = Annotated[float, Field(ge=0, lt=1)]
STRUCTURED_SOURCES = ("factory", "pickle")


def check_source(settings: PruneSettings, kind: str) -> None:
    """Refuse what cannot be pruned before any work is done (the build calls it up front)."""
    if settings.method == "structured" and kind not in STRUCTURED_SOURCES:
        raise BadInputError(
            f"[prune] method \"structured\" needs a PyTorch nn.Module source (file.py:factory or a "
            f"pickled module); this {kind} source cannot be re-traced after removing "
            "channels: use method = \"unstructured\" or \"2:4\"")


class PruneBudget(StrictModel):
    """How much pruning may cost against the unpruned model, after fine-tuning."""

    max_top1_drop: float = Field(1.0, ge=0, description="percentage points; needs labelled --eval data")
    max_map_drop: float = Field(1.0, ge=0, description="mAP@0.5:0.95 points; detection --eval data")
    max_metric_drop: float = Field(0.02, ge=0, description="for a --eval file.py:fn metric")
    min_cosine: float = Field(0.9, ge=-1, le=1, description="mean per-sample cosine vs the unpruned model")
    on_exceed: Literal["fail", "backoff"] = "fail"
    backoff_step: float = Field(0.1, gt=0, lt=1, description="ratio taken off per retry")


class PruneSettings(StrictModel):
    method: Literal["structured", "unstructured", "2:4"] = "structured"
    ratio: Ratio = Field(0.3, description="structured: channels removed per group; "
                                      "unstructured: weights zeroed")
    importance: Importance = "l1"
    global_pruning: bool = Field(False, description="rank channels across layers instead of within each")
    layer_ratios: dict[str, Ratio] = Field(default_factory=dict, description="module name -> ratio")
    skip_layers: list[str] = Field(default_factory=list, description="module (structured) or node names")
    keep_first_last: bool = Field(True, description="the first conv stays whole; the last layer always does")
    round_to: int | None = Field(None, ge=1, description="channel counts a multiple of this (8/16/32)")
    scan: bool = Field(False, description="choose per-layer ratios from a sensitivity scan (structured)")
    scan_ratios: list[Ratio] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    scan_tolerance: float | None = Field(None, ge=0, description="per-group drop allowed; default half "
                                                                 "the budget")
    train: str | None = Field(None, description="fine-tuning data; --train overrides; default: calibration")
    eval_count: int = Field(500, ge=1)
    seed: int = 0
    preprocess: ImagePreprocessing = ImagePreprocessing()
    finetune: FinetuneSettings = FinetuneSettings()
    budget: PruneBudget = PruneBudget()


def channel_plan(settings: PruneSettings) -> ChannelPlan:
    return ChannelPlan(ratio=settings.ratio, layer_ratios=dict(settings.layer_ratios),
                       skip=tuple(settings.skip_layers), keep_first=settings.keep_first_last,
                       round_to=settings.round_to, importance=settings.importance,
                       global_pruning=settings.global_pruning)


def scan_tolerance(settings: PruneSettings, primary: str) -> float:
    """The drop one group may cost alone in the scan: the profile's, else half the budget."""
    if settings.scan_tolerance is not None:
        return settings.scan_tolerance
    return allowed_drop(primary, settings.budget) / 2


@dataclass
class _Step:
    """One model along the way: what it is, how good, how fast, how big."""

    label: str
    path: Path
    scores: Scores
    latency_ms: float | None
    cost: cost.ModelCost

    def to_json(self) -> dict[str, Any]:
        return {"model": self.label, "file": self.path.name, "scores": self.scores.to_json(),
                "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 4),
                **self.cost.to_json()}


def _shuffled(samples: Iterator[LabelledSample], seed: int, window: int = 1024) -> Iterator[LabelledSample]:
    """A streaming shuffle: a buffer of `window` samples, drawn from at random."""
    rng = random.Random(seed)
    buffer: list[LabelledSample] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) == window:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


class PruneStage:
    name = "prune"
    Settings = PruneSettings
    lossy = True

    @staticmethod
    def parity_budget(settings: PruneSettings, float_budget: AccuracyBudget) -> AccuracyBudget:
        """Later float stages (fuse, lowering) must still match the pruned model elementwise."""
        return float_budget

    def run(self, model: Artifact, settings: PruneSettings, ctx: BuildContext,
            output: Path) -> Iterator[StageOutcome]:
        """The pruned model at the profile's ratio, then (with on_exceed = "backoff") at ratios
        backed off step by step; the pipeline ships the first within the budget."""
        started = perf_counter()
        work = ctx.work_dir / "prune"
        work.mkdir(parents=True, exist_ok=True)
        check_source(settings, ctx.source.kind)
        eval_data = self._eval_data(ctx, settings)
        feed = ctx.reference.inputs[0]
        with target_run(model, ctx) as run:  # scored against itself: nothing to run again
            evaluator = Evaluator(eval_data, run)
            evaluator.check_baseline(ctx.profile.detect.min_float_map50)
            steps = [_Step("unpruned", model.path, evaluator.reference_scores(), time_run(run, feed),
                           cost.measure(model.path))]
        warnings: list[str] = []
        if not eval_data.has_labels and eval_data.metric is None:
            warnings.append(f"no labelled --eval data: only fidelity to the unpruned model was measured "
                            f"({eval_data.origin})")
        metrics: dict[str, Any] = {"method": settings.method, "evaluation": {
            "origin": eval_data.origin, "samples": len(eval_data.samples), "primary": evaluator.primary}}
        attempts = (self._structured(settings, ctx, work, evaluator, feed, metrics, warnings)
                    if settings.method == "structured"
                    else self._sparse(model, settings, ctx, work, evaluator, feed, metrics, warnings))
        with contextlib.closing(attempts):
            yield from self._outcomes(attempts, model, steps, metrics, warnings, settings, started)

    @staticmethod
    def _outcomes(attempts: Iterator[tuple[_Step, Judgement, list[str]]], model: Artifact, steps: list[_Step],
                  metrics: dict[str, Any], warnings: list[str], settings: PruneSettings,
                  started: float) -> Iterator[StageOutcome]:
        for tried, (final, judgement, notes) in enumerate(attempts):
            before = steps[0]
            shown = [*steps, *metrics.pop("attempt_steps")]
            metrics.update({
                "steps": [s.to_json() for s in shown],
                "attempts": metrics["tried"][:tried + 1],
                "macs_ratio": round(final.cost.macs / before.cost.macs, 4) if before.cost.macs else None,
                "params_ratio": round(final.cost.params / before.cost.params, 4)
                if before.cost.params else None,
                "latency_ratio": round(final.latency_ms / before.latency_ms, 4)
                if before.latency_ms and final.latency_ms else None,
                "latency_note": "median of 20 runs in the build process, on the target's runtime; bench/ "
                                "measures properly",
                "budget": settings.budget.model_dump(mode="json"),
                "seconds_total": round(perf_counter() - started, 3),
            })
            artifact = Artifact(final.path, "onnx", model.inputs, model.outputs)
            shipped = {key: value for key, value in metrics.items() if key != "tried"}
            yield StageOutcome(artifact, metrics=shipped, warnings=[*warnings, *notes], judgement=judgement)

    def _judgement(self, evaluator: Evaluator, step: _Step, settings: PruneSettings, label: str,
                   context: str, remedy: str, subject: str = "pruning") -> Judgement:
        return Judgement(step.scores, evaluator.float_scores, evaluator.float_metric, settings.budget,
                         "unpruned", label=label, subject=subject, context=context, remedy=remedy)

    # ------------------------------------------------------------------ structured

    def _structured(self, settings: PruneSettings, ctx: BuildContext, work: Path, evaluator: Evaluator,
                    feed: dict, metrics: dict[str, Any], warnings: list[str],
                    ) -> Iterator[tuple[_Step, Judgement, list[str]]]:
        import torch

        from edgepipe.stages.export import export_module

        module = ctx.source.module
        if not isinstance(module, torch.nn.Module):
            raise BadInputError(f"[prune] {ctx.source.spec} is not a torch.nn.Module")
        example = tuple(torch.from_numpy(feed[s.name].copy()) for s in ctx.inputs)
        export_settings = ctx.profile.stage_settings["export"]
        train = self._train_source(ctx, settings, warnings)
        if settings.finetune.epochs and train is None:
            warnings.append("fine-tuning skipped: no training data (--train, or --calib with real data)")

        def data() -> Iterator[Batch]:
            assert train is not None
            samples = _shuffled(train.labelled(settings.finetune.samples), settings.seed)
            return batches(samples, ctx.inputs, settings.finetune.batch_size)

        plan = channel_plan(settings)
        gradients = taylor_gradients(data) if train is not None else None
        if settings.scan:
            tolerance = scan_tolerance(settings, evaluator.primary)
            rows = scan(module, example, ctx.inputs, plan, settings.scan_ratios, evaluator, gradients)
            chosen = choose_ratios(rows, settings.ratio, tolerance)
            plan = replace(plan, layer_ratios={**chosen, **settings.layer_ratios})
            metrics["scan"] = {"ratios": settings.scan_ratios, "tolerance": tolerance,
                               "primary": evaluator.primary, "float": evaluator.float_primary,
                               "rows": [r.to_json() for r in rows], "chosen": chosen}
        metrics["tried"] = []
        metrics.update({"importance": settings.importance,
                        "speed": "real: the model has fewer channels, every runtime runs less"})
        scale = 1.0
        while True:
            attempt = len(metrics["tried"]) + 1
            current = replace(plan, ratio=plan.ratio * scale,
                              layer_ratios={k: v * scale for k, v in plan.layer_ratios.items()})
            ctx.progress(f"prune: ratio {current.ratio:.2f}, attempt {attempt}")
            pruned = prune_channels(module, example, current, gradients)
            path = export_module(pruned, ctx, export_settings, work / f"pruned-{attempt}.onnx").path
            step = self._step(f"pruned (ratio {current.ratio:.2f})", path, evaluator, ctx, feed)
            attempt_steps = [step]
            if settings.finetune.epochs and train is not None:
                history = distill(pruned, module, data, settings.finetune,
                                  on_epoch=lambda epoch: ctx.progress(
                                      f"prune: distilling, epoch {epoch + 1} of {settings.finetune.epochs}"))
                path = export_module(pruned, ctx, export_settings, work / f"finetuned-{attempt}.onnx").path
                step = self._step("pruned + distilled", path, evaluator, ctx, feed)
                attempt_steps.append(step)
                metrics["finetune"] = {**history, "data": train.describe(history["samples_per_epoch"])}
            metrics["tried"].append({"ratio": round(current.ratio, 4),
                                     "score": evaluator.primary_value(step.scores)})
            metrics["attempt_steps"] = attempt_steps
            metrics["channels"] = {"before": channel_counts(module), "after": channel_counts(pruned)}
            next_scale = scale - settings.budget.backoff_step / max(plan.ratio, 1e-9)
            if settings.budget.on_exceed == "fail":
                context, remedy = "", ("lower [prune] ratio, fine-tune longer ([prune.finetune] epochs), or "
                                       "set [prune.budget] on_exceed = \"backoff\"")
            else:
                context = f" even after backing off {attempt - 1} times" if attempt > 1 else ""
                remedy = "fine-tune longer ([prune.finetune] epochs) or relax [prune.budget]"
            yield step, self._judgement(evaluator, step, settings, f"ratio {current.ratio:.4g}",
                                        f"{context} (ratio {current.ratio:.2f})", remedy), []
            if settings.budget.on_exceed == "fail" or next_scale <= 1e-6:
                return
            scale = next_scale

    # ------------------------------------------------------------------ sparse

    def _sparse(self, model: Artifact, settings: PruneSettings, ctx: BuildContext, work: Path,
                evaluator: Evaluator, feed: dict, metrics: dict[str, Any],
                warnings: list[str]) -> Iterator[tuple[_Step, Judgement, list[str]]]:
        pattern = "2:4" if settings.method == "2:4" else "unstructured"
        sparsity = 0.5 if pattern == "2:4" else settings.ratio
        metrics["tried"] = []
        warnings.append(f"{pattern} sparsity keeps every weight's dense shape: no speed-up on "
                        f"{ctx.target.backend}; only the compressed bundle is smaller")
        while True:
            path = work / f"sparse-{len(metrics['tried']) + 1}.onnx"
            layers = unstructured.sparsify(model.path, path, pattern=pattern, sparsity=sparsity,
                                           skip=set(settings.skip_layers),
                                           keep_first_last=settings.keep_first_last)
            step = self._step(f"{pattern} sparsity {sparsity:.2f}", path, evaluator, ctx, feed)
            metrics["tried"].append({"ratio": round(sparsity, 4),
                                     "score": evaluator.primary_value(step.scores)})
            metrics["attempt_steps"] = [step]
            dense = [layer for layer in layers if layer.note]
            metrics.update({
                "pattern": pattern,
                "layers": [{"node": x.node, "weight": x.weight, "shape": list(x.shape),
                            "sparsity": round(x.sparsity, 4), "note": x.note} for x in layers],
                "speed": "none on dense runtimes: zeros are still multiplied; the compressed size shrinks"
                + ("; TensorRT on Ampere/Orin runs 2:4 weights on sparse tensor cores (--sparsity=enable)"
                   if pattern == "2:4" else ""),
            })
            notes = [f"{len(dense)} layers kept dense: {dense[0].note}"] if dense else []
            last = (settings.budget.on_exceed == "fail" or pattern == "2:4"
                    or sparsity - settings.budget.backoff_step <= 1e-6)
            judgement = self._judgement(evaluator, step, settings, f"sparsity {sparsity:.4g}",
                                        f" (sparsity {sparsity:.2f})", "", subject=f"{pattern} sparsity")
            yield step, judgement, notes
            if last:
                return
            sparsity -= settings.budget.backoff_step

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _step(label: str, path: Path, evaluator: Evaluator, ctx: BuildContext, feed: dict) -> _Step:
        artifact = Artifact(path, "onnx", ctx.inputs, ())
        with target_run(artifact, ctx) as run:  # one compiled model, scored then timed
            return _Step(label, path, evaluator.score(run), time_run(run, feed), cost.measure(path))

    @staticmethod
    def _train_source(ctx: BuildContext, settings: PruneSettings, warnings: list[str]) -> SampleSource | None:
        spec = ctx.train or settings.train or ctx.calib
        if spec is None:
            return None
        if spec == RANDOM:
            warnings.append("no fine-tuning or Taylor ranking on random data (--calib random)")
            return None
        return open_samples(spec, ctx.inputs, flag="--train", preprocess=settings.preprocess,
                            seed=settings.seed, with_labels=True, detection=is_detector(ctx))

    @staticmethod
    def _eval_data(ctx: BuildContext, settings: PruneSettings) -> EvalData:
        calibration = None
        if ctx.calib is not None and ctx.calib != RANDOM:
            calibration = open_samples(ctx.calib, ctx.inputs, preprocess=settings.preprocess,
                                       seed=settings.seed, detection=is_detector(ctx))
        data = eval_data_for(ctx.eval, calibration, ctx.inputs, limit=settings.eval_count,
                             preprocess=settings.preprocess, seed=settings.seed,
                             fallback=ctx.reference.inputs,
                             fallback_origin=f"{ctx.reference.origin} (parity samples)")
        assert data is not None  # the parity samples always exist
        return data
