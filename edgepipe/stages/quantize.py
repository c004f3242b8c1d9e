"""Quantize: post-training int8, every engine driven by one loop, every candidate judged by the pipeline.

Steps: onnxruntime's quantization pre-processing; ranges calibrated by streaming the
calibration set; the scheme and engine chosen per model type and target; then the
candidates, in order: everything quantized; and, when the budget allows a remedy,
either NNCF's accuracy control (OpenVINO IR) or per-layer fallback, which keeps the
tensor with the worst local quantization error in float, one more at a time. The
pipeline ships the first candidate within `[quantize.budget]`.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from edgepipe import onnx_model, postprocess
from edgepipe.artifact import Artifact
from edgepipe.budget import TIMED, allowed_drop
from edgepipe.candidate_timing import ROUNDS, RUNS, Speedup, host_runs_target, speedup
from edgepipe.config import AccuracyBudget
from edgepipe.data.evaluation import EvalData, calibration_eval, eval_data_for
from edgepipe.data.preprocessing import ImagePreprocessing
from edgepipe.data.samples import Feed, SampleSource, open_samples
from edgepipe.errors import BackendError, BadInputError, first_line
from edgepipe.postprocess import is_detector
from edgepipe.quantization import detection_head, ranges, sensitivity, tensorrt_cache, transformer
from edgepipe.quantization.engines import Int8Engine, Int8Job, NncfOpenVino, OnnxRuntimeStatic, engine_for
from edgepipe.quantization.qdq import AccuracyControl
from edgepipe.scoring import Evaluator, Scores, detections_as_truth
from edgepipe.settings import StrictModel
from edgepipe.stages.base import BuildContext, Judgement, StageOutcome
from edgepipe.target_run import target_run
from edgepipe.trt.estimate import FACTS as GPU_FACTS
from edgepipe.trt.estimate import Estimate, estimate, missing_facts
from edgepipe.trt.versions import TensorRtVersion

if TYPE_CHECKING:
    import onnx

CALIBRATION_CACHE = "calib.cache"
LOWERING_MIN_COSINE = 0.999  # lowered int8 model vs the quantize stage's own output
CALIBRATION_NEEDED = ("the quantize stage needs calibration data: --calib PATH (images, .npy/.npz, "
                      "or file.py:fn), or --calib random (the accuracy is then unknown)")
ORT_RANGES = "calibration-ranges.json"
PROBE_SAMPLES = 16  # calibration samples that rank tensors and choose ranges
EFFECT_CANDIDATES = 8  # tensors whose real effect each fallback step measures (about 1 s each)


class QuantizeBudget(StrictModel):
    """How much int8 may cost, judged on `--eval` data (else on calibration samples)."""

    max_top1_drop: float = Field(1.0, ge=0, description="percentage points; needs labelled --eval data")
    max_map_drop: float = Field(1.0, ge=0, description="mAP@0.5:0.95 points; detection --eval data")
    max_metric_drop: float = Field(0.02, ge=0, description="for a --eval file.py:fn metric")
    min_cosine: float = Field(0.99, ge=-1, le=1, description="mean per-sample cosine vs the float model")
    on_exceed: Literal["fail", "fallback"] = "fallback"
    max_fallback: int = Field(8, ge=0, description="most tensors kept in float before giving up")
    min_speedup: float = Field(
        1.1, ge=0, description="int8 must run this many times faster than the float model on the "
                               "target's runtime, timed on this host in separate processes where this "
                               "host runs the target (0: not checked)")


class QuantizeSettings(StrictModel):
    calib: str | None = Field(None, description="path, file.py:fn or 'random'; --calib overrides")
    calib_count: int = Field(300, ge=1)
    eval_count: int = Field(500, ge=1)
    seed: int = 0
    engine: Literal["auto", "onnxruntime", "nncf", "nncf-openvino", "litert"] = Field(
        "auto", description="auto: the target's [int8] engine; nncf-openvino: OpenVINO targets only")
    method: ranges.Method = Field("auto", description="auto: min-max, percentile, per-tensor MSE and median "
                                                      "per-sample max ranges from one pass, the best on "
                                                      "calibration samples")
    percentile: float = Field(99.99, gt=50, le=100)
    per_channel: bool = True
    bias_correction: bool = Field(True, description="onnxruntime engine: move each layer's mean shift "
                                                    "from rounded weights into its bias (NNCF engines: "
                                                    "NNCF's own)")
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
    return open_samples(spec, ctx.inputs, preprocess=settings.preprocess, seed=settings.seed,
                        detection=is_detector(ctx))


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


def _fingerprint(feed: Feed) -> bytes:
    digest = hashlib.sha256()
    for name in sorted(feed):
        value = np.ascontiguousarray(feed[name])
        digest.update(f"{name}:{value.dtype}:{value.shape}".encode() + value.tobytes())
    return digest.digest()


class _CalibrationTap:
    """The calibration samples as they stream through calibration, keeping what the stage needs
    of them besides ranges: the first `keep` (the probe that ranks tensors) and a fingerprint of
    each (to find evaluation samples that are calibration samples). One read, not three: an
    image folder is decoded once."""

    def __init__(self, samples: Iterator[Feed], keep: int) -> None:
        self._samples, self._keep = samples, keep
        self.probe: list[Feed] = []
        self.fingerprints: set[bytes] = set()

    def __iter__(self) -> Iterator[Feed]:
        for feed in self._samples:
            self.fingerprints.add(_fingerprint(feed))
            if len(self.probe) < self._keep:
                self.probe.append(feed)
            yield feed

    def overlap(self, eval_data: EvalData) -> int:
        """How many evaluation samples are byte-for-byte calibration samples."""
        return sum(_fingerprint(sample.feed) in self.fingerprints for sample in eval_data.samples)


def _metric(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _size(artifact: Artifact) -> int:
    return sum(path.stat().st_size for path in (artifact.path, *artifact.companion_files))


class _Speed:
    """int8 candidates timed against the float model (candidate_timing: fresh processes,
    interleaved), each at most once, and only where this host runs what the target runs; for
    TensorRT targets whose GPU peaks are known, estimated against fp16 instead (trt/estimate.py)."""

    def __init__(self, float_model: Artifact, ctx: BuildContext, eval_data: EvalData,
                 min_speedup: float) -> None:
        self.float_model, self.ctx, self.min_speedup = float_model, ctx, min_speedup
        self.feed = eval_data.samples[0].feed if eval_data.samples else None
        device = ctx.target.device
        self.why_not = host_runs_target(device.kind, device.isa, ctx.target.backend, device.cpu_features)
        self.estimates: dict[Path, Estimate | None] | None = None
        self.float_precision = "fp16"
        if min_speedup <= 0:
            self.why_not = "[quantize.budget] min_speedup = 0"
        elif ctx.target.backend == "tensorrt":
            missing = missing_facts(device)
            self.why_not = missing or self.why_not
            if missing is None:
                self.estimates = {}
                version = TensorRtVersion.parse(ctx.target.lower.tensorrt_version)
                self.float_precision = "fp16" if version.int8_from_calibration_cache else "fp32"
        elif self.feed is None:
            self.why_not = "no sample to time with"
        self.method = (f"estimated for the target's GPU: a roofline of each weighted layer from its MACs "
                       f"and bytes at the [device] peaks, float layers in {self.float_precision}, TensorRT "
                       f"not on this host" if self.estimates is not None else TIMED)
        self.precision = getattr(ctx.profile.stage_settings.get("lower"), "precision", "f32")
        self._timed: dict[Path, Speedup] = {}

    def key(self, name: str) -> str:
        """The metrics key: a timing is measured (left out of the bundle's manifest, manifest.py);
        an estimate is as reproducible as the model it is read from, and stays."""
        return f"estimated_{name}" if self.estimates is not None else name

    def of(self, candidate: Artifact) -> float | None:
        """float time / int8 time; None where not timed here."""
        if self.estimates is not None:
            if candidate.path not in self.estimates and candidate.format == "onnx":
                self.estimates[candidate.path] = estimate(candidate.path, self.ctx.target.device,
                                                          self.float_precision)
            return self.measured(candidate)
        if self.why_not is not None:
            return None
        if candidate.path not in self._timed:
            assert self.feed is not None
            self.ctx.progress(f"quantize: timing {candidate.path.name} against float ({ROUNDS} pairs of "
                              "fresh processes)")
            self._timed[candidate.path] = speedup(self.float_model, candidate, self.min_speedup,
                                                  backend=self.ctx.target.backend,
                                                  runtime=self.ctx.target.runtime, precision=self.precision,
                                                  feed=self.feed)
        return self.measured(candidate)

    def measured(self, candidate: Artifact) -> float | None:
        """The speed-up if `of` already timed this candidate (never times anything)."""
        if self.estimates is not None:
            found = self.estimates.get(candidate.path)
            return None if found is None else found.speedup
        if candidate.path not in self._timed:
            return None
        return self._timed[candidate.path].value

    def summary(self, candidate: Artifact) -> str:
        if self.estimates is not None:
            found = self.estimates[candidate.path]
            assert found is not None
            return (f"estimated int8 {found.int8_ms:.4g} ms vs fp16 {found.fp16_ms:.4g} ms on "
                    f"{self.ctx.target.name}'s GPU")
        timed = self._timed[candidate.path]
        pairs = ", ".join(f"{r:.2f}x" for r in timed.ratios)
        return (f"int8 {timed.candidate_ms:.3f} ms vs float {timed.baseline_ms:.3f} ms on this host; "
                f"per pair {pairs}")

    def record(self, candidate: Artifact) -> dict[str, Any]:
        """For the report: what was timed, how, and where; or why nothing was."""
        if self.estimates is not None and candidate.path in self.estimates:
            found = self.estimates[candidate.path]
            if found is None:
                return {"measured": False, "reason": "no weighted layer of the int8 model could be "
                                                     "sized (dynamic shapes?): its TensorRT speed is not "
                                                     "estimated"}
            device = self.ctx.target.device
            return {"measured": False, "estimated": True, "reason": self.why_not,
                    **found.to_json(), "method": self.method,
                    "device": {"target": self.ctx.target.name,
                               **{name: getattr(device, name) for name in GPU_FACTS}}}
        if self.why_not is not None or candidate.path not in self._timed:
            return {"measured": False, "reason": self.why_not or "not timed"}
        from edgepipe.profiler.device_info import host_facts

        timed = self._timed[candidate.path]
        return {"measured": True, "float_ms": round(timed.baseline_ms, 4),
                "int8_ms": round(timed.candidate_ms, 4), "speedup": round(timed.value, 3),
                "pair_speedups": [round(r, 3) for r in timed.ratios],
                "method": f"{len(timed.ratios)} interleaved pairs of fresh processes ({ROUNDS}, and {ROUNDS} "
                          f"more where they split around the threshold), {RUNS} runs each; median of the "
                          "pairs' ratios",
                "host": {key: value for key, value in host_facts().items()
                         if key in ("cpu", "cpu_features", "logical_cpus")}}


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
        if is_detector(ctx):  # a model that is no yolov8-style detector: say so before calibrating
            postprocess.head_classes(model.outputs[0])
        work = ctx.work_dir / "quantize"
        work.mkdir(parents=True, exist_ok=True)
        prepared = work / "prepared.onnx"
        _pre_process(model.path, prepared)
        proto = onnx_model.load_plain(prepared)
        float_model = Artifact(prepared, "onnx", model.inputs, model.outputs)

        source = calibration_source(ctx, settings)
        cache = work / ORT_RANGES
        calibration_started = perf_counter()
        ctx.progress(f"quantize: calibrating ({settings.method}) on up to {settings.calib_count} samples")
        tap = _CalibrationTap(source.samples(settings.calib_count), keep=PROBE_SAMPLES)
        counts = ranges.calibrate(prepared, iter(tap), cache,
                                  method=settings.method, percentile=settings.percentile,
                                  symmetric=ctx.target.int8.symmetric_activations,
                                  on_chunk=lambda done: ctx.progress(
                                      f"quantize: calibrating ({settings.method}): {done} samples"))
        calibration_seconds = perf_counter() - calibration_started

        eval_data = eval_data_for(ctx.eval, source, ctx.inputs, limit=settings.eval_count,
                                  preprocess=settings.preprocess, seed=settings.seed)
        assert eval_data is not None  # a calibration source always exists here
        overlap = tap.overlap(eval_data) if ctx.eval else None
        ctx.progress(f"quantize: scoring the float model on {len(eval_data.samples)} evaluation samples")
        with target_run(float_model, ctx) as run:
            evaluator = Evaluator(eval_data, run)
        evaluator.check_baseline(ctx.profile.detect.min_float_map50)

        model_type = settings.model_type
        if model_type == "auto":
            model_type = "transformer" if transformer.is_transformer(proto) else "cnn"
        requested = ctx.target.int8.engine if settings.engine == "auto" else settings.engine
        scheme, excluded, only = self._selection(proto, settings, model_type, ctx, requested)
        detection = self._detection(proto, settings, ctx, requested, eval_data, excluded)
        engine = engine_for(requested, ctx.target.name, ctx.target.backend, dynamic=scheme == "dynamic")
        int8_scheme, weight_bits = ctx.target.int8.for_device(ctx.target.device)
        job = Int8Job(prepared=prepared, inputs=model.inputs, outputs=model.outputs,
                      samples=lambda: source.samples(settings.calib_count), count=settings.calib_count,
                      scheme=int8_scheme, method=settings.method, per_channel=settings.per_channel,
                      transformer=model_type == "transformer", excluded=tuple(excluded),
                      only=None if only is None else tuple(only), ranges=cache,
                      probe=tap.probe,
                      tflite=self._tflite_inputs(ctx),
                      bias_correction=settings.bias_correction,
                      float_head=bool(detection) and detection["float_head"] == "pt2e")

        warnings = []
        if source.is_random:
            warnings.append("calibrated on random data (--calib random): int8 accuracy is unknown")
        if detection and detection["warning"]:
            warnings.append(detection["warning"])
        if overlap:
            warnings.append(f"{overlap} of {len(eval_data.samples)} evaluation samples are also calibration "
                            f"samples: the scores below are optimistic; keep --eval data apart from --calib")
        if not eval_data.has_labels and not eval_data.has_boxes and eval_data.metric is None:
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
            "weights": "int8 symmetric " + ("per-channel" if settings.per_channel else "per-tensor")
                       + (", 7-bit" if int8_scheme.reduce_range else ""),
            "weight_bits": weight_bits,
            "engine": engine.name,
            "calibration": {"origin": source.describe(counts["samples"]), "random": source.is_random,
                            "method": settings.method, "samples": counts["samples"],
                            # the ranges in the cache: auto's choice (min-max until it has chosen)
                            "ranges": "minmax" if settings.method == "auto" else settings.method,
                            "tensors": counts["tensors"], "seconds": round(calibration_seconds, 3)},
            "preprocessing": source.preprocessing.to_json() if source.preprocessing else None,
            "evaluation_overlap": ("evaluated on the calibration samples" if not ctx.eval
                                   else f"{overlap} evaluation samples identical to calibration samples"),
            "budget": settings.budget.model_dump(mode="json"),
            "excluded": excluded,
            **({"detection": detection} if detection else {}),
        }

        def score(candidate: Artifact) -> Scores:
            ctx.progress(f"quantize: scoring {candidate.path.name} on {len(eval_data.samples)} samples")
            with target_run(candidate, ctx) as run:
                return evaluator.score(run)

        speed = _Speed(float_model, ctx, eval_data, settings.budget.min_speedup)
        with target_run(float_model, ctx) as run:
            probe_data = calibration_eval(iter(job.probe), "calibration samples")
            if detection:  # a detector's fallback is ranked by mAP, as the budget judges it
                probe_data = detections_as_truth(probe_data, run)
            probe = Evaluator(probe_data, run)
        ctx.progress(f"quantize: writing int8 ({engine.name})")
        if settings.method == "auto" and isinstance(engine, OnnxRuntimeStatic):
            first, search = self._range_search(engine, job, counts["histograms"], counts["extremes"], cache,
                                               probe, settings, ctx, work)
            base_metrics["calibration"]["search"] = search
            base_metrics["calibration"]["ranges"] = search["chosen"]
        else:
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
                       "size_bytes": {"float": prepared.stat().st_size, "int8": _size(candidate)},
                       "bias_correction": candidate.facts.get("bias_correction")}
            judgement = Judgement(scores, evaluator.float_scores, evaluator.float_metric, settings.budget,
                                  "float", label=label, subject="int8 quantization", context=context,
                                  remedy=remedy, speedup=lambda: speed.of(candidate),
                                  min_speedup=settings.budget.min_speedup, speed_method=speed.method)

            def complete() -> None:
                metrics[speed.key("int8_speed")] = speed.record(candidate)
                measured = speed.measured(candidate)
                if measured is not None and label != "every layer int8" and metrics["fallback"]:
                    metrics["fallback"][-1][speed.key("speedup")] = round(measured, 3)  # the step that ships
                metrics["calibration_cache"] = self._tensorrt_cache(
                    cache, candidate.path if candidate.format == "onnx" else None, ctx,
                    base_metrics["calibration"]["ranges"])
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
        # Keeping layers in float only makes int8 slower: when every layer in int8 does not pay,
        # no fallback step can, so say so now rather than after minutes of fallback.
        first_speedup = speed.of(first)  # None where not timed (min_speedup 0 included)
        if first_speedup is not None and first_speedup < budget.min_speedup:
            yield outcome(first, first_scores, "every layer int8", f" ({speed.summary(first)})",
                          "no fallback can make it faster: ship fp16 (--profile fp16), or --min-speedup 0 "
                          "if the estimate is wrong for this model" if speed.estimates is not None else
                          "no fallback can make it faster: ship the float model (--profile fp32, or "
                          "--profile auto to time every precision), or --min-speedup 0 when the device "
                          "is not this host")
            return
        yield outcome(first, first_scores, "every layer int8", "", remedy)
        if budget.on_exceed == "fail":
            return
        if isinstance(engine, NncfOpenVino):
            yield self._accuracy_control(engine, job, first, score, evaluator, budget, work, eval_data, ctx,
                                         rows, outcome)
            return
        def effect(candidate: Artifact, layers: list[sensitivity.QuantizedTensor],
                   kept: list[str]) -> list[tuple[sensitivity.QuantizedTensor, float | None]]:
            return self._by_effect(candidate, layers, kept, probe, job, work, ctx)

        yield from self._fall_back(engine, job, first, worst, score, budget, work, rows, outcome, speed,
                                   effect, ctx)

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
                   rows: list[dict[str, Any]], outcome, speed: _Speed, effect,
                   ctx: BuildContext) -> Iterator[StageOutcome]:
        """Keep the worst tensor's nodes in float, re-measure, repeat: one candidate per step.

        Re-measuring matters: keeping a node in float can expose a neighbour's tensor
        to quantization (a Conv whose fused ReLU is now float quantizes its own output).
        Which tensor goes next is decided by its measured effect on the model's output (the
        candidate with only that tensor back in float), among the worst by local SQNR.
        A step that meets the accuracy budget is timed (by the pipeline, through its
        judgement); once a step no longer pays, later steps (more float) cannot either.
        """
        kept: list[str] = []
        while len(rows) < budget.max_fallback:
            ctx.progress(f"quantize: fallback step {len(rows) + 1} of at most {budget.max_fallback}: "
                         f"measuring {EFFECT_CANDIDATES} tensors' effect")
            ranked = effect(candidate, layers, kept)
            if not ranked:
                return
            layer, probe_value = ranked[0]
            new_nodes = [n for n in layer.nodes if n not in kept]
            kept += new_nodes
            candidate = engine.write(job, kept, work / f"int8-fallback-{len(rows) + 1}{engine.suffix}")
            scores = score(candidate)
            probe_key = "probe_map50_95" if scores.map50_95 is not None else "probe_cosine"
            row = {**layer.to_json(), "nodes": new_nodes, probe_key: probe_value,
                   "mean_cosine_after": scores.mean_cosine,
                   "top1_after": scores.top1, "top1_agreement_after": scores.top1_agreement,
                   **({"map50_95_after": scores.map50_95} if scores.map50_95 is not None else {})}
            rows.append(row)
            detector = scores.map50_95 is not None  # a raw head has no top-1 to agree on
            key = "map50_95_after" if detector else "mean_cosine_after"
            best = max(range(len(rows)), key=lambda i: rows[i][key] if rows[i][key] is not None else -2.0)
            also = (f"mAP@0.5:0.95 {rows[best]['map50_95_after']:.2f}" if detector else
                    f"top-1 agreement {_metric(rows[best]['top1_agreement_after'])}")
            yield outcome(candidate, scores, f"{len(rows)} tensors in float",
                          f" even with {len(kept)} nodes kept in float ({len(rows)} tensors, max_fallback "
                          f"{budget.max_fallback}; best step {best + 1}: mean cosine "
                          f"{_metric(rows[best]['mean_cosine_after'])}, {also})", "")
            # an estimate costs a shape inference, so every step gets one; a timing only steps
            # within the accuracy budget (the pipeline's judgement asked for it)
            measured = speed.of(candidate) if speed.estimates is not None else speed.measured(candidate)
            if measured is not None:
                row[speed.key("speedup")] = round(measured, 3)
                if measured < budget.min_speedup:
                    return  # within accuracy but no longer paying: more float pays even less
            layers = engine.rank(job, candidate)

    @staticmethod
    def _range_search(engine: OnnxRuntimeStatic, job: Int8Job, histograms: dict, extremes: dict, cache: Path,
                      probe: Evaluator, settings: QuantizeSettings, ctx: BuildContext,
                      work: Path) -> tuple[Artifact, dict[str, Any]]:
        """`method = "auto"`: min-max, percentile, per-tensor MSE and median per-sample max ranges, all
        from one calibration pass, each written as int8 and scored on calibration samples (never the
        evaluation data); the best output cosine wins and its ranges become the stage's cache.

        No one rule wins everywhere: on MobileNetV2 (real weights, real photos, ONNX Runtime) this
        search scored percentile 0.985, MSE 0.982, min-max 0.973; min-max keeps the rare large
        values that percentile clips."""
        caches = ranges.candidate_caches(cache, histograms, symmetric=ctx.target.int8.symmetric_activations,
                                         percentile=settings.percentile, extremes=extremes)
        written: dict[str, Artifact] = {}
        cosines: dict[str, float | None] = {}
        for method, path in caches.items():
            ctx.progress(f"quantize: range search, {method}")
            candidate = engine.write(replace(job, ranges=path), [], work / f"int8-{method}.onnx")
            with target_run(candidate, ctx) as run:
                cosines[method] = probe.score(run).mean_cosine  # fidelity of the whole output
            written[method] = candidate
        chosen = max(cosines, key=lambda m: cosines[m] if cosines[m] is not None else -2.0)
        shutil.copyfile(caches[chosen], cache)
        return (written[chosen],
                {"chosen": chosen, "probe": f"mean output cosine on {len(job.probe)} calibration samples",
                 "cosine": {m: None if c is None else round(c, 5) for m, c in cosines.items()}})

    @staticmethod
    def _by_effect(candidate: Artifact, layers: list[sensitivity.QuantizedTensor], kept: list[str],
                   probe: Evaluator, job: Int8Job, work: Path,
                   ctx: BuildContext) -> list[tuple[sensitivity.QuantizedTensor, float | None]]:
        """The tensors not yet kept in float, the EFFECT_CANDIDATES worst by local SQNR re-ordered by
        the output cosine (a detector's: mAP against the float model's detections) on calibration
        samples of `candidate` with only that tensor in float;
        the rest after them, unmeasured. A tensor's local SQNR says how coarsely it is rounded, not
        how much of that error reaches the output. On MobileNetV2 (ONNX Runtime, min-max ranges)
        eight steps chosen this way reached cosine 0.9886, by local SQNR alone 0.9877."""
        open_layers = [t for t in layers if any(n not in kept for n in t.nodes)]
        head, tail = open_layers[:EFFECT_CANDIDATES], open_layers[EFFECT_CANDIDATES:]
        measured: list[tuple[sensitivity.QuantizedTensor, float | None]] = []
        variant = work / "effect.onnx"
        for tensor in head:
            if candidate.format != "onnx" or not sensitivity.without_quantizer(candidate.path, tensor,
                                                                                job.prepared, variant):
                measured.append((tensor, None))
                continue
            with target_run(Artifact(variant, "onnx", candidate.inputs, candidate.outputs), ctx) as run:
                measured.append((tensor, probe.primary_value(probe.score(run))))
        variant.unlink(missing_ok=True)
        order = sorted(range(len(measured)),
                       key=lambda i: (measured[i][1] is None, -(measured[i][1] or 0.0), i))
        return [measured[i] for i in order] + [(t, None) for t in tail]

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
        before = engine.fake_quantize_count(candidate)
        restored = engine.write(job, [], work / "int8-accuracy-control.xml", accuracy=control)
        scores = score(restored)
        removed = before - engine.fake_quantize_count(restored)
        rows.append({
            "tensor": "nncf.quantize_with_accuracy_control", "kind": "nncf",
            "sqnr_db": "—", "nodes": [f"{removed} FakeQuantize ops reverted to float (ranked by NNCF on "
                                     f"{primary})"],
            "mean_cosine_after": scores.mean_cosine, "top1_after": scores.top1,
            "top1_agreement_after": scores.top1_agreement})
        return outcome(restored, scores, "after NNCF accuracy control",
                       f" even after NNCF's accuracy control ({removed} FakeQuantize ops reverted)",
                       "relax [quantize.budget] or give more calibration data")

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
    def _detection(model: onnx.ModelProto, settings: QuantizeSettings, ctx: BuildContext, engine: str,
                   eval_data: EvalData, excluded: list[str]) -> dict[str, Any] | None:
        """A detector's record, and its head's tail added to `excluded` (the detection-aware
        scheme) where the engine can keep single layers float (the TFLite converters cannot)."""
        if not is_detector(ctx):
            return None
        prediction, decode = detection_head.head_tail(model)
        kept, how = [], "none"
        keep = ctx.profile.detect.keep_head_float
        if keep and engine != "litert":
            kept = [name for name in [*prediction, *decode] if name not in excluded]
            excluded.extend(kept)
            how = "qdq"
        elif keep:
            from edgepipe.tflite.convert import choose_converter

            converter = choose_converter(ctx.target.lower.converter, ctx.source.kind, ctx.source.module,
                                         tuple(ctx.profile.stages), "int8").converter
            # litert-torch: the same walk on the torch.fx graph (detection_head.fx_head_tail);
            # TensorFlow's full-integer converter (onnx2tf) quantizes every layer.
            how = "pt2e" if converter == "litert-torch" else "none"
        weighted = [n.name for n in model.graph.node if n.op_type in QUANTIZABLE]
        floated = [n for n in weighted if n in set(prediction) | set(decode)]
        boxes = eval_data.detection
        warning = None
        if len(floated) * 2 > len(weighted):
            warning = (f"the detection-aware scheme keeps {len(floated)} of {len(weighted)} weighted layers "
                       "float: is the first output a yolov8 head? ([detect] keep_head_float = false "
                       "quantizes them)")
        return {"head": "yolov8", "classes": postprocess.head_classes(onnx_model.graph_outputs(model)[0]),
                "prediction_layers": prediction, "kept_float": kept,
                "data": boxes.layout if boxes else None, "float_head": how, "warning": warning}

    @staticmethod
    def _tensorrt_cache(cache: Path, model: Path | None, ctx: BuildContext, method: str) -> dict[str, Any]:
        """calib.cache beside the intermediates, and in the bundle where the target uses it."""
        path = ctx.work_dir / CALIBRATION_CACHE
        scales = tensorrt_cache.write_cache(ranges.load_ranges(cache), path,
                                            tensorrt_version=ctx.target.int8.tensorrt_version,
                                            method=method,
                                            qdq_scales=tensorrt_cache.symmetric_qdq_scales(model)
                                            if model is not None else None)
        if ctx.target.int8.calibration_cache:
            ctx.bundle_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, ctx.bundle_dir / CALIBRATION_CACHE)
        finite = [s for s in scales.values() if math.isfinite(s)]
        return {"file": CALIBRATION_CACHE, "tensors": len(scales),
                "in_bundle": ctx.target.int8.calibration_cache, "max_scale": max(finite) if finite else None}
