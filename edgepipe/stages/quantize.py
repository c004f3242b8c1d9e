"""Quantize: post-training int8 to QDQ ONNX, measured against the float model, gated by a budget.

Steps: onnxruntime's quantization pre-processing; ranges calibrated by streaming
the calibration set; the scheme chosen per model type and target; the int8 model
scored against the float one on evaluation data; and when the budget is broken,
either a failed build or per-layer fallback: the layers with the worst local
quantization error are kept in float, one at a time, until the budget holds.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

from pydantic import Field

from edgepipe import onnx_model
from edgepipe.artifact import Artifact
from edgepipe.config import AccuracyBudget
from edgepipe.errors import BackendError, BadInputError, GateFailedError, first_line
from edgepipe.evaluation import (
    EvalData,
    Evaluator,
    Scores,
    allowed_drop,
    budget_violations,
    eval_data_for,
)
from edgepipe.preprocessing import ImagePreprocessing
from edgepipe.quantization import ranges, sensitivity, tensorrt_cache, transformer
from edgepipe.quantization.litert import write_tflite_int8
from edgepipe.quantization.qdq import (
    AccuracyControl,
    write_dynamic,
    write_nncf,
    write_nncf_openvino,
    write_qdq,
)
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, StageOutcome
from edgepipe.stages.calibration import SampleSource, open_samples
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


@dataclass
class _Candidate:
    path: Path
    kept_float: list[str]
    scores: Scores


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


def _violations(float_scores: Scores, float_metric: float | None, scores: Scores,
                budget: QuantizeBudget) -> list[str]:
    return budget_violations(float_scores, float_metric, scores, budget, "float")


def _fake_quantize_count(path: Path) -> int:
    import openvino as ov

    return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(str(path)).get_ops())


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
            output: Path) -> StageOutcome:
        started = perf_counter()
        work = ctx.work_dir / "quantize"
        work.mkdir(parents=True, exist_ok=True)
        prepared = work / "prepared.onnx"
        _pre_process(model.path, prepared)
        proto = onnx_model.load_plain(prepared)

        source = calibration_source(ctx, settings)
        cache = work / ORT_RANGES
        calibration_started = perf_counter()
        ranges_symmetric = ctx.target.int8.symmetric_activations
        counts = ranges.calibrate(prepared, source.samples(settings.calib_count), cache,
                                  method=settings.method, percentile=settings.percentile,
                                  symmetric=ranges_symmetric)
        calibration_seconds = perf_counter() - calibration_started

        eval_data = eval_data_for(ctx.eval, source, ctx.inputs, limit=settings.eval_count,
                                  preprocess=settings.preprocess, seed=settings.seed)
        assert eval_data is not None  # a calibration source always exists here
        with target_run(prepared, ctx) as run:
            evaluator = Evaluator(eval_data, run)

        model_type = settings.model_type
        if model_type == "auto":
            model_type = "transformer" if transformer.is_transformer(proto) else "cnn"
        engine = ctx.target.int8.engine if settings.engine == "auto" else settings.engine
        if engine == "nncf-openvino" and ctx.target.backend != "openvino":
            raise BadInputError(f"[quantize] engine \"nncf-openvino\" writes an OpenVINO IR; target "
                                f"'{ctx.target.name}' uses {ctx.target.backend}")
        scheme, excluded, only = self._selection(proto, settings, model_type, ctx, engine)
        if engine == "litert" and ctx.target.backend != "tflite":
            raise BadInputError(f"[quantize] engine \"litert\" writes a .tflite; target "
                                f"'{ctx.target.name}' uses {ctx.target.backend}")
        suffix = {"nncf-openvino": ".xml", "litert": ".tflite"}.get(engine, ".onnx")

        def quantize(kept_float: Sequence[str], path: Path,
                     accuracy: AccuracyControl | None = None) -> _Candidate:
            exclude = [*excluded, *kept_float]
            if scheme == "dynamic":
                write_dynamic(prepared, path, per_channel=settings.per_channel, exclude=exclude, only=only)
            elif engine == "nncf":
                write_nncf(prepared, path, lambda: source.samples(settings.calib_count),
                           scheme=ctx.target.int8, count=settings.calib_count,
                           transformer=model_type == "transformer", exclude=exclude)
            elif engine == "nncf-openvino":
                write_nncf_openvino(prepared, path, lambda: source.samples(settings.calib_count),
                                    scheme=ctx.target.int8, count=settings.calib_count,
                                    transformer=model_type == "transformer", exclude=exclude,
                                    accuracy=accuracy)
            elif engine == "litert":
                write_tflite_int8(prepared, path, lambda: source.samples(settings.calib_count), ctx,
                                  model.outputs, per_channel=settings.per_channel, exclude=exclude)
            else:
                write_qdq(prepared, cache, path, scheme=ctx.target.int8, method=settings.method,
                          per_channel=settings.per_channel, exclude=exclude, only=only)
            with target_run(path, ctx) as run:
                return _Candidate(path, list(kept_float), evaluator.score(run))

        candidate = quantize([], work / f"int8{suffix}")
        first_scores = candidate.scores
        problems = _violations(evaluator.float_scores, evaluator.float_metric, candidate.scores,
                               settings.budget)
        fallback_rows: list[dict[str, Any]] = []
        probe = [s.feed for s in eval_data.samples[:16]]

        def measure(path: Path) -> list[sensitivity.QuantizedTensor]:
            if scheme == "dynamic" or path.suffix != ".onnx":
                return []  # no QDQ to read: dynamic MatMuls, or an IR (NNCF ranks its own)
            return sensitivity.measure(prepared, path, probe)

        layers = measure(candidate.path)
        if problems and settings.budget.on_exceed == "fail":
            raise GateFailedError(f"int8 quantization exceeds the budget: {'; '.join(problems)}; set "
                                  "[quantize.budget] on_exceed = \"fallback\" to keep sensitive layers "
                                  "in float")
        if problems and engine == "nncf-openvino":
            candidate, fallback_rows = self._accuracy_control(candidate, quantize, evaluator,
                                                              settings.budget, work, eval_data, ctx)
        elif problems:
            candidate, fallback_rows = self._fall_back(candidate, layers, quantize, measure, evaluator,
                                                       settings.budget, work, eval_data, ctx)
            problems = _violations(evaluator.float_scores, evaluator.float_metric, candidate.scores,
                                   settings.budget)
            if problems:
                kept = sum(len(r["nodes"]) for r in fallback_rows)
                raise GateFailedError(
                    f"int8 quantization exceeds the budget even with {kept} nodes kept in float "
                    f"({len(fallback_rows)} tensors, max_fallback {settings.budget.max_fallback}): "
                    f"{problems[0]}")

        if suffix == ".xml":
            output = output.with_suffix(".xml")
            shutil.copyfile(candidate.path, output)
            shutil.copyfile(candidate.path.with_suffix(".bin"), output.with_suffix(".bin"))
        elif suffix == ".tflite":
            output = output.with_suffix(".tflite")
            for companion in candidate.path.parent.glob(candidate.path.name + "*"):  # .io.json, .route.json
                suffix_of_companion = companion.name[len(candidate.path.name):]
                shutil.copyfile(companion, output.parent / (output.name + suffix_of_companion))
        else:
            shutil.copyfile(candidate.path, output)
        warnings = []
        if source.is_random:
            warnings.append("calibrated on random data (--calib random): int8 accuracy is unknown")
        if not eval_data.has_labels and eval_data.metric is None:
            warnings.append(f"no labelled --eval data: only fidelity to the float model was measured "
                            f"({eval_data.origin})")
        cache_scales = self._tensorrt_cache(cache, output if suffix == ".onnx" else None, ctx, settings)
        if suffix == ".xml":
            warnings.append("int8 lives in the OpenVINO IR (engine nncf-openvino); the bundle's model.onnx "
                            "is the float model it was quantized from")
            artifact = Artifact(output, "openvino", model.inputs, model.outputs,
                                (output.with_suffix(".bin"),))
            int8_bytes = output.stat().st_size + output.with_suffix(".bin").stat().st_size
        elif suffix == ".tflite":
            warnings.append("int8 lives in the .tflite its converter wrote (engine litert); the bundle's "
                            "model.onnx is the float model it was quantized from")
            artifact = Artifact(output, "tflite", model.inputs, model.outputs)
            int8_bytes = output.stat().st_size
        else:
            artifact = Artifact(output, "onnx", model.inputs,
                                onnx_model.graph_outputs(onnx_model.load_plain(output)))
            int8_bytes = output.stat().st_size
        return StageOutcome(artifact, warnings=warnings, metrics={
            "scheme": scheme,
            "model_type": model_type,
            "activations": ctx.target.int8.activations if scheme != "dynamic" else "dynamic uint8",
            "weights": "int8 symmetric " + ("per-channel" if settings.per_channel else "per-tensor"),
            "engine": engine if scheme != "dynamic" else "onnxruntime",
            "calibration": {"origin": source.describe(counts["samples"]), "random": source.is_random,
                            "method": settings.method, "samples": counts["samples"],
                            "tensors": counts["tensors"], "seconds": round(calibration_seconds, 3)},
            "preprocessing": source.preprocessing.to_json() if source.preprocessing else None,
            "evaluation": {"origin": eval_data.origin, "samples": len(eval_data.samples),
                           "float": evaluator.float_scores.to_json(),
                           "int8_before_fallback": first_scores.to_json(),
                           "int8": candidate.scores.to_json()},
            "budget": settings.budget.model_dump(mode="json"),
            "excluded": excluded,
            "fallback": fallback_rows,
            "worst_layers": [row.to_json() for row in layers[:10]],
            "size_bytes": {"float": prepared.stat().st_size, "int8": int8_bytes},
            "latency_ms": self._latencies(prepared, candidate.path, eval_data, ctx),
            "calibration_cache": cache_scales,
            "seconds_total": round(perf_counter() - started, 3),
        })

    @staticmethod
    def _latencies(float_path: Path, int8_path: Path, eval_data: EvalData,
                   ctx: BuildContext) -> dict[str, float] | None:
        """In-build estimates on the target's runtime, for the report; bench/ measures properly."""
        if not eval_data.samples:
            return None
        feed = eval_data.samples[0].feed
        return {"float": round(median_latency_ms(float_path, ctx, feed), 4),
                "int8": round(median_latency_ms(int8_path, ctx, feed), 4)}

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
    def _fall_back(candidate: _Candidate, layers: list[sensitivity.QuantizedTensor], quantize, measure,
                   evaluator: Evaluator, budget: QuantizeBudget, work: Path, eval_data: EvalData,
                   ctx: BuildContext) -> tuple[_Candidate, list[dict[str, Any]]]:
        """Keep the worst tensor's nodes in float, re-measure, repeat until the budget holds.

        Re-measuring matters: keeping a node in float can expose a neighbour's tensor
        to quantization (a Conv whose fused ReLU is now float quantizes its own output).
        """
        rows: list[dict[str, Any]] = []
        feed = eval_data.samples[0].feed if eval_data.samples else None
        latency = median_latency_ms(candidate.path, ctx, feed) if feed else None
        kept: list[str] = []
        while len(rows) < budget.max_fallback:
            layer = next((t for t in layers if any(n not in kept for n in t.nodes)), None)
            if layer is None:
                break
            new_nodes = [n for n in layer.nodes if n not in kept]
            kept += new_nodes
            candidate = quantize(kept, work / f"int8-fallback-{len(rows) + 1}.onnx")
            new_latency = median_latency_ms(candidate.path, ctx, feed) if feed else None
            rows.append({**layer.to_json(), "nodes": new_nodes,
                         "mean_cosine_after": candidate.scores.mean_cosine,
                         "top1_after": candidate.scores.top1,
                         "latency_cost_ms": None if latency is None else round(new_latency - latency, 3)})
            latency = new_latency
            if not _violations(evaluator.float_scores, evaluator.float_metric, candidate.scores, budget):
                break
            layers = measure(candidate.path)
        return candidate, rows

    @staticmethod
    def _accuracy_control(candidate: _Candidate, quantize, evaluator: Evaluator, budget: QuantizeBudget,
                          work: Path, eval_data: EvalData,
                          ctx: BuildContext) -> tuple[_Candidate, list[dict[str, Any]]]:
        """NNCF's quantize_with_accuracy_control, held to the same budget as every other route."""
        primary = evaluator.primary
        # NNCF measures top-1 as a fraction, the budget in percentage points.
        max_drop = allowed_drop(primary, budget) / (100.0 if primary == "top1" else 1.0)
        control = AccuracyControl(items=list(range(len(eval_data.samples))),
                                  validate=evaluator.primary_on, max_drop=max_drop)
        feed = eval_data.samples[0].feed if eval_data.samples else None
        latency = median_latency_ms(candidate.path, ctx, feed) if feed else None
        before = _fake_quantize_count(candidate.path)
        restored = quantize([], work / "int8-accuracy-control.xml", accuracy=control)
        new_latency = median_latency_ms(restored.path, ctx, feed) if feed else None
        removed = before - _fake_quantize_count(restored.path)
        return restored, [{
            "tensor": "nncf.quantize_with_accuracy_control", "kind": "nncf",
            "sqnr_db": "—", "nodes": [f"{removed} FakeQuantize ops reverted to float (ranked by NNCF on "
                                     f"{primary})"],
            "mean_cosine_after": restored.scores.mean_cosine, "top1_after": restored.scores.top1,
            "latency_cost_ms": None if latency is None else round(new_latency - latency, 3)}]

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
