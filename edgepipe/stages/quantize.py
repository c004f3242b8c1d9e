"""Quantize: post-training int8, every engine driven by one loop, every candidate judged by the pipeline.

Steps: onnxruntime's quantization pre-processing; ranges calibrated by streaming the
calibration set; the scheme and engine chosen per model type and target; then the
candidates, in order: everything quantized; and, when the budget allows a remedy,
either NNCF's accuracy control (OpenVINO IR) or per-layer fallback, which keeps the
tensor with the worst local quantization error in float, one more at a time. The
pipeline ships the first candidate within `[quantize.budget]`.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from pydantic import Field

from edgepipe import onnx_model
from edgepipe.artifact import Artifact
from edgepipe.budget import allowed_drop
from edgepipe.config import AccuracyBudget
from edgepipe.data.evaluation import EvalData, eval_data_for
from edgepipe.data.preprocessing import ImagePreprocessing
from edgepipe.data.samples import SampleSource, open_samples
from edgepipe.errors import BackendError, BadInputError, first_line
from edgepipe.quantization import ranges, sensitivity, tensorrt_cache, transformer
from edgepipe.quantization.engines import Int8Engine, Int8Job, NncfOpenVino, engine_for
from edgepipe.quantization.qdq import AccuracyControl
from edgepipe.scoring import Evaluator, Scores
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, Judgement, StageOutcome
from edgepipe.target_run import median_latency_ms, target_run

CALIBRATION_CACHE = "calib.cache"
LOWERING_MIN_COSINE = 0.999  # lowered int8 model vs the quantize stage's own output
CALIBRATION_NEEDED = ("the quantize stage needs calibration data: --calib PATH (images, .npy/.npz, "
                      "or file.py:fn), or --calib random (the accuracy is then unknown)")
ORT_RANGES = "calibration-ranges.json"


class QuantizeBudget(StrictModel):
    """How much int8 may cost, judged on `--eval` data (else on calibration samples)."""

    max_top1_drop: float = Field(1.0, ge=0, description="percentage points; needs labelled --eval data")
    max_metric_drop: float = Field(0.02, ge=0, description="for a --eval file.py:fn metric")
    min_cosine: float = Field(0.99, ge=-1, le=1, description="mean per-sample cosine vs the float model")
    on_exceed: Literal["fail", "fallback"] = "fallback"
    max_fallback: int = Field(8, ge=0, description="most tensors kept in float before giving up")


class QuantizeSettings(StrictModel):
    calib: str | None = Field(None, description="path, file.py:fn or 'random'; --calib overrides")
    calib_count: int = Field(300, ge=1)
    eval_count: int = Field(500, ge=1)
    seed: int = 0
    engine: Literal["auto", "onnxruntime", "nncf", "nncf-openvino", "litert"] = Field(
        "auto", description="auto: the target's [int8] engine; nncf-openvino: OpenVINO targets only")
    method: ranges.Method = "minmax"
    percentile: float = Field(99.99, gt=50, le=100)
    per_channel: bool = True
    model_type: Literal["auto", "cnn", "transformer"] = "auto"
    exclude_nodes: list[str] = Field(default_factory=list)
    exclude_op_types: list[str] = Field(default_factory=list)
    keep_first_last: bool = Field(False, description="first and last quantizable layers in float")
    preprocess: ImagePreprocessing = ImagePreprocessing()
    budget: QuantizeBudget = QuantizeBudget()


QUANTIZABLE = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def calibration_source(ctx: BuildContext, settings: QuantizeSettings) -> SampleSource:
    spec = ctx.calib or settings.calib
    if spec is None:
        raise BadInputError(CALIBRATION_NEEDED)
    return open_samples(spec, ctx.inputs, preprocess=settings.preprocess, seed=settings.seed)


def _name_nodes(model_path: Path) -> None:
    """onnxruntime.quantization selects and excludes nodes by name; give every node one."""
    import onnx

    model = onnx.load(str(model_path))
    used = {n.name for n in model.graph.node if n.name}
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name, changed = name, True
            used.add(name)
    if changed:
        onnx_model.save(model, model_path)


def _pre_process(source: Path, output: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Its optimization step is skipped: the fuse stage already folded the graph, and on
    # the example encoder ORT's own basic-level rewrite wrote a model ORT then refused
    # to load ("Attempt to replace the existing tensor", onnxruntime 1.32).
    try:
        quant_pre_process(str(source), str(output), skip_optimization=True, skip_symbolic_shape=True)
    except Exception as exc:
        raise BackendError(f"onnxruntime's quantization pre-processing failed on {source.name}: "
                           f"{first_line(exc)}") from None
    _name_nodes(output)


def _size(artifact: Artifact) -> int:
    return sum(path.stat().st_size for path in (artifact.path, *artifact.companion_files))


class QuantizeStage:
    name = "quantize"
    Settings = QuantizeSettings
    lossy = True
    int8 = True

    @staticmethod
    def parity_budget(settings: QuantizeSettings, float_budget: AccuracyBudget) -> AccuracyBudget:
        """What later stages (lowering) must keep of this stage's outputs: int8 kernels
        round differently from one runtime build to the next, so cosine, not allclose."""
        return float_budget.model_copy(update={"atol": None, "rtol": None,
                                               "min_cosine": LOWERING_MIN_COSINE,
                                               "min_top1_agreement": 0.0})

    def run(self, model: Artifact, settings: QuantizeSettings, ctx: BuildContext,
            output: Path) -> Iterator[StageOutcome]:
        started = perf_counter()
        work = ctx.work_dir / "quantize"
        work.mkdir(parents=True, exist_ok=True)
        prepared = work / "prepared.onnx"
        _pre_process(model.path, prepared)
        proto = onnx_model.load_plain(prepared)
        float_model = Artifact(prepared, "onnx", model.inputs, model.outputs)

        source = calibration_source(ctx, settings)
        cache = work / ORT_RANGES
        calibration_started = perf_counter()
        counts = ranges.calibrate(prepared, source.samples(settings.calib_count), cache,
                                  method=settings.method, percentile=settings.percentile,
                                  symmetric=ctx.target.int8.symmetric_activations)
        calibration_seconds = perf_counter() - calibration_started

        eval_data = eval_data_for(ctx.eval, source, ctx.inputs, limit=settings.eval_count,
                                  preprocess=settings.preprocess, seed=settings.seed)
        assert eval_data is not None  # a calibration source always exists here
        with target_run(float_model, ctx) as run:
            evaluator = Evaluator(eval_data, run)

        model_type = settings.model_type
        if model_type == "auto":
            model_type = "transformer" if transformer.is_transformer(proto) else "cnn"
        requested = ctx.target.int8.engine if settings.engine == "auto" else settings.engine
        scheme, excluded, only = self._selection(proto, settings, model_type, ctx, requested)
        engine = engine_for(requested, ctx.target.name, ctx.target.backend, dynamic=scheme == "dynamic")
        job = Int8Job(prepared=prepared, inputs=model.inputs, outputs=model.outputs,
                      samples=lambda: source.samples(settings.calib_count), count=settings.calib_count,
                      scheme=ctx.target.int8, method=settings.method, per_channel=settings.per_channel,
                      transformer=model_type == "transformer", excluded=tuple(excluded),
                      only=None if only is None else tuple(only), ranges=cache,
                      probe=[s.feed for s in eval_data.samples[:16]], tflite=self._tflite_inputs(ctx))

        warnings = []
        if source.is_random:
            warnings.append("calibrated on random data (--calib random): int8 accuracy is unknown")
        if not eval_data.has_labels and eval_data.metric is None:
            warnings.append(f"no labelled --eval data: only fidelity to the float model was measured "
                            f"({eval_data.origin})")
        if engine.suffix == ".xml":
            warnings.append("int8 lives in the OpenVINO IR (engine nncf-openvino); the portable model.onnx "
                            "is the float model it was quantized from")
        elif engine.suffix == ".tflite":
            warnings.append("int8 lives in the .tflite its converter wrote (engine litert); the portable "
                            "model.onnx is the float model it was quantized from")
        base_metrics = {
            "scheme": scheme, "model_type": model_type,
            "activations": ctx.target.int8.activations if scheme != "dynamic" else "dynamic uint8",
            "weights": "int8 symmetric " + ("per-channel" if settings.per_channel else "per-tensor"),
            "engine": engine.name,
            "calibration": {"origin": source.describe(counts["samples"]), "random": source.is_random,
                            "method": settings.method, "samples": counts["samples"],
                            "tensors": counts["tensors"], "seconds": round(calibration_seconds, 3)},
            "preprocessing": source.preprocessing.to_json() if source.preprocessing else None,
            "budget": settings.budget.model_dump(mode="json"),
            "excluded": excluded,
        }

        def score(candidate: Artifact) -> Scores:
            with target_run(candidate, ctx) as run:
                return evaluator.score(run)

        first = engine.write(job, [], work / f"int8{engine.suffix}")
        first_scores = score(first)
        worst = engine.rank(job, first)
        rows: list[dict[str, Any]] = []

        def outcome(candidate: Artifact, scores: Scores, label: str, context: str,
                    remedy: str) -> StageOutcome:
            metrics = {**base_metrics,
                       "evaluation": {"origin": eval_data.origin, "samples": len(eval_data.samples),
                                      "float": evaluator.float_scores.to_json(),
                                      "int8_before_fallback": first_scores.to_json(),
                                      "int8": scores.to_json()},
                       "fallback": list(rows), "worst_layers": [row.to_json() for row in worst[:10]],
                       "size_bytes": {"float": prepared.stat().st_size, "int8": _size(candidate)}}
            judgement = Judgement(scores, evaluator.float_scores, evaluator.float_metric, settings.budget,
                                  "float", label=label, subject="int8 quantization", context=context,
                                  remedy=remedy)

            def complete() -> None:
                metrics["latency_ms"] = self._latencies(float_model, candidate, eval_data, ctx)
                metrics["calibration_cache"] = self._tensorrt_cache(
                    cache, candidate.path if candidate.format == "onnx" else None, ctx, settings)
                metrics["seconds_total"] = round(perf_counter() - started, 3)

            return StageOutcome(candidate, metrics=metrics, warnings=list(warnings), judgement=judgement,
                                complete=complete)

        budget = settings.budget
        if budget.on_exceed == "fail":
            remedy = "set [quantize.budget] on_exceed = \"fallback\" to keep sensitive layers in float"
        elif not engine.ranks and not isinstance(engine, NncfOpenVino):
            remedy = f"the {engine.name} engine ({scheme}) cannot keep single layers in float"
        elif budget.max_fallback == 0 and not isinstance(engine, NncfOpenVino):
            remedy = "[quantize.budget] max_fallback = 0 keeps no layer in float"
        else:
            remedy = ""
        yield outcome(first, first_scores, "every layer int8", "", remedy)
        if budget.on_exceed == "fail":
            return
        if isinstance(engine, NncfOpenVino):
            yield self._accuracy_control(engine, job, first, score, evaluator, budget, work, eval_data, ctx,
                                         rows, outcome)
            return
        yield from self._fall_back(engine, job, first, worst, score, budget, work, eval_data, ctx, rows,
                                   outcome)

    @staticmethod
    def _tflite_inputs(ctx: BuildContext) -> dict[str, Any]:
        """What the TFLite converters need beyond the ONNX model (litert engine only)."""
        if ctx.target.backend != "tflite":
            return {}
        from edgepipe.stages.lower import example_args

        return {"lower": ctx.target.lower, "source_kind": ctx.source.kind, "module": ctx.source.module,
                "stages": tuple(ctx.profile.stages), "example_args": lambda: example_args(ctx)}

    @staticmethod
    def _fall_back(engine: Int8Engine, job: Int8Job, candidate: Artifact,
                   layers: list[sensitivity.QuantizedTensor], score, budget: QuantizeBudget, work: Path,
                   eval_data: EvalData, ctx: BuildContext, rows: list[dict[str, Any]],
                   outcome) -> Iterator[StageOutcome]:
        """Keep the worst tensor's nodes in float, re-measure, repeat: one candidate per step.

        Re-measuring matters: keeping a node in float can expose a neighbour's tensor
        to quantization (a Conv whose fused ReLU is now float quantizes its own output).
        """
        feed = eval_data.samples[0].feed if eval_data.samples else None
        latency = median_latency_ms(candidate, ctx, feed) if feed else None
        kept: list[str] = []
        while len(rows) < budget.max_fallback:
            layer = next((t for t in layers if any(n not in kept for n in t.nodes)), None)
            if layer is None:
                return
            new_nodes = [n for n in layer.nodes if n not in kept]
            kept += new_nodes
            candidate = engine.write(job, kept, work / f"int8-fallback-{len(rows) + 1}{engine.suffix}")
            scores = score(candidate)
            new_latency = median_latency_ms(candidate, ctx, feed) if feed else None
            rows.append({**layer.to_json(), "nodes": new_nodes,
                         "mean_cosine_after": scores.mean_cosine, "top1_after": scores.top1,
                         "latency_cost_ms": None if latency is None else round(new_latency - latency, 3)})
            latency = new_latency
            yield outcome(candidate, scores, f"{len(rows)} tensors in float",
                          f" even with {len(kept)} nodes kept in float ({len(rows)} tensors, max_fallback "
                          f"{budget.max_fallback})", "")
            layers = engine.rank(job, candidate)

    @staticmethod
    def _accuracy_control(engine: NncfOpenVino, job: Int8Job, candidate: Artifact, score,
                          evaluator: Evaluator, budget: QuantizeBudget, work: Path, eval_data: EvalData,
                          ctx: BuildContext, rows: list[dict[str, Any]], outcome) -> StageOutcome:
        """NNCF's quantize_with_accuracy_control; its result is judged like every other candidate."""
        primary = evaluator.primary
        # NNCF measures top-1 as a fraction, the budget in percentage points.
        max_drop = allowed_drop(primary, budget) / (100.0 if primary == "top1" else 1.0)
        control = AccuracyControl(items=list(range(len(eval_data.samples))),
                                  validate=evaluator.primary_on, max_drop=max_drop)
        feed = eval_data.samples[0].feed if eval_data.samples else None
        latency = median_latency_ms(candidate, ctx, feed) if feed else None
        before = engine.fake_quantize_count(candidate)
        restored = engine.write(job, [], work / "int8-accuracy-control.xml", accuracy=control)
        scores = score(restored)
        new_latency = median_latency_ms(restored, ctx, feed) if feed else None
        removed = before - engine.fake_quantize_count(restored)
        rows.append({
            "tensor": "nncf.quantize_with_accuracy_control", "kind": "nncf",
            "sqnr_db": "—", "nodes": [f"{removed} FakeQuantize ops reverted to float (ranked by NNCF on "
                                     f"{primary})"],
            "mean_cosine_after": scores.mean_cosine, "top1_after": scores.top1,
            "latency_cost_ms": None if latency is None else round(new_latency - latency, 3)})
        return outcome(restored, scores, "after NNCF accuracy control",
                       f" even after NNCF's accuracy control ({removed} FakeQuantize ops reverted)",
                       "relax [quantize.budget] or give more calibration data")

    @staticmethod
    def _latencies(float_model: Artifact, int8_model: Artifact, eval_data: EvalData,
                   ctx: BuildContext) -> dict[str, float] | None:
        """In-build estimates on the target's runtime, for the report; bench/ measures properly."""
        if not eval_data.samples:
            return None
        feed = eval_data.samples[0].feed
        return {"float": round(median_latency_ms(float_model, ctx, feed), 4),
                "int8": round(median_latency_ms(int8_model, ctx, feed), 4)}

    @staticmethod
    def _selection(model, settings: QuantizeSettings, model_type: str, ctx: BuildContext,
                   engine: str) -> tuple[str, list[str], list[str] | None]:
        """(scheme, excluded node names, only these nodes or None)."""
        by_type = [n.name for n in model.graph.node if n.op_type in settings.exclude_op_types]
        names = {n.name for n in model.graph.node}
        unknown = [n for n in settings.exclude_nodes if n not in names]
        if unknown:
            raise BadInputError(f"[quantize] exclude_nodes: no node named '{unknown[0]}' in the model")
        excluded = [*settings.exclude_nodes, *by_type]
        if settings.keep_first_last:
            layers = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE]
            excluded += layers[:1] + layers[-1:]
        if model_type == "transformer" and ctx.target.int8.dynamic_matmul:
            return "dynamic", excluded, [n for n in transformer.weight_matmuls(model) if n not in excluded]
        if engine == "nncf-openvino":
            return "static (nncf, OpenVINO model)", excluded, None
        if engine == "litert":
            return "static (TFLite converter)", excluded, None
        if engine == "nncf":
            # NNCF's transformer preset keeps LayerNorm/Softmax/GELU float and applies SmoothQuant.
            return "static (nncf)", excluded, None
        if model_type == "transformer":
            return "static-weight-matmuls", excluded, [n for n in transformer.weight_matmuls(model)
                                                       if n not in excluded]
        return "static", excluded, None

    @staticmethod
    def _tensorrt_cache(cache: Path, model: Path | None, ctx: BuildContext,
                        settings: QuantizeSettings) -> dict[str, Any]:
        """calib.cache beside the intermediates, and in the bundle where the target uses it."""
        path = ctx.work_dir / CALIBRATION_CACHE
        scales = tensorrt_cache.write_cache(ranges.load_ranges(cache), path,
                                            tensorrt_version=ctx.target.int8.tensorrt_version,
                                            method=settings.method,
                                            qdq_scales=tensorrt_cache.symmetric_qdq_scales(model)
                                            if model is not None else None)
        if ctx.target.int8.calibration_cache:
            ctx.bundle_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, ctx.bundle_dir / CALIBRATION_CACHE)
        finite = [s for s in scales.values() if math.isfinite(s)]
        return {"file": CALIBRATION_CACHE, "tensors": len(scales),
                "in_bundle": ctx.target.int8.calibration_cache, "max_scale": max(finite) if finite else None}
