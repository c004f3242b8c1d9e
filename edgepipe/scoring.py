"""Scores of a model against its float original: task accuracy (top-1/top-5, a detector's
mAP, a user metric) and fidelity (cosine, SQNR, top-1 agreement), measured whatever the
data, because labels are not always at hand and a bad model can keep its top-1 for a while.

Scores are numbers only; whether they are good enough is the budget's question
(edgepipe.budget), asked by the pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgepipe.data.detection_map import mean_average_precision
from edgepipe.data.evaluation import EvalData, Run
from edgepipe.errors import BadInputError, EdgepipeError, first_line
from edgepipe.parity import cosine
from edgepipe.runtime.detection import detect, head_classes

# Detections as mAP is measured (Ultralytics' validation settings): every class above a low
# score per anchor, per-class NMS at IoU 0.7, COCO's 100 per image.
EVAL_SCORE_THRESHOLD = 0.001
EVAL_IOU_THRESHOLD = 0.7
# The float model's own detections that stand in for labels (`detections_as_truth`): what a
# deployed detector would report (Ultralytics' predict defaults).
TRUTH_SCORE_THRESHOLD = 0.25
TRUTH_IOU_THRESHOLD = 0.45
TRUTH_LAYOUT = "float-model"


def detections_as_truth(data: EvalData, float_run: Run) -> EvalData:
    """Unlabelled samples (the calibration probe) as detection data: the float model's confident
    detections are the boxes, so a candidate is ranked by the mAP it keeps of them. The raw
    head's cosine hardly moves when boxes move: its coordinates (tens of pixels) outweigh the
    class scores (0-1), so a cosine of 1.0000 sat beside a 4-point mAP loss."""
    from edgepipe.data.detection_sets import DetectionSet, GroundTruth
    from edgepipe.data.samples import LabelledSample

    samples, class_count = [], 1
    for sample in data.samples:
        head = next(iter(float_run(sample.feed).values()))
        class_count = head_classes(np.shape(head), "the model's first output")
        found = detect(head, score_threshold=TRUTH_SCORE_THRESHOLD, iou_threshold=TRUTH_IOU_THRESHOLD,
                       max_detections=100)
        truth = GroundTruth(found["boxes"], found["classes"], np.zeros(len(found["scores"]), bool))
        samples.append(LabelledSample(sample.feed, None, truth))
    boxes = DetectionSet(f"{data.origin} with the float model's detections as boxes", TRUTH_LAYOUT,
                         None, class_count, None, [])  # type: ignore[arg-type]  # no images to read
    return EvalData(origin=boxes.origin, samples=samples, detection=boxes)


def _sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    noise = float(np.sum((reference - candidate) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _topk(logits: np.ndarray, label: int, k: int) -> bool:
    flat = logits.reshape(-1)
    return label in np.argsort(flat)[::-1][:k]


@dataclass(frozen=True)
class Scores:
    """One model's scores; fidelity fields compare it with the float model."""

    top1: float | None = None
    top5: float | None = None
    map50: float | None = None  # detection: mAP@0.5, points
    map50_95: float | None = None  # detection: mAP@0.5:0.95, points
    metric: float | None = None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    sqnr_db: float | None = None
    top1_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        def tidy(value: float | None, digits: int = 6) -> float | str | None:
            if value is None:
                return None
            if math.isinf(value):
                return "inf" if value > 0 else "-inf"
            return float(f"{value:.{digits}g}")

        return {key: tidy(value) for key, value in self.__dict__.items()}


def _outputs_of(run: Run, data: EvalData) -> list[list[np.ndarray]]:
    return [[np.asarray(v, np.float64) for v in run(sample.feed).values()] for sample in data.samples]


class Evaluator:
    """Scores candidates against the float model; the float outputs are computed once."""

    def __init__(self, data: EvalData, float_run: Run) -> None:
        self.data = data
        self._float_outputs = _outputs_of(float_run, data)
        self._float_metric = self._call_metric(float_run) if data.metric else None
        if data.has_boxes:
            self._check_boxes()
        self.float_scores = self._labelled_scores(self._float_outputs, None)

    def check_baseline(self, min_map50: float) -> None:
        """Nothing to lose is nothing to judge: an int8 model scoring about 0 like its float model
        passes any budget. A float detector below `min_map50` on labelled boxes almost always
        means a class order, box convention or preprocessing mismatch, so say so."""
        scores = self.float_scores
        if self.data.has_boxes and scores.map50 is not None and not scores.map50 >= min_map50:
            raise BadInputError(f"{self.data.origin}: the float model's mAP@0.5 is {scores.map50:.2f} "
                                f"(< [detect] min_float_map50 = {min_map50:g}): it finds almost none of the "
                                "labelled boxes; check the class order, the box format and the "
                                "preprocessing (letterbox, scale, channels)")

    def _check_boxes(self) -> None:
        """Labelled boxes the model can be judged on: some boxes, classes its head has."""
        assert self.data.detection is not None
        classes = head_classes(self._float_outputs[0][0].shape, "the model's first output")
        counts = [len(s.boxes.classes) for s in self.data.samples]
        if not sum(counts):
            raise BadInputError(f"{self.data.origin}: the evaluated images hold no labelled boxes")
        largest = max(int(s.boxes.classes.max(initial=-1)) for s in self.data.samples)
        if largest >= classes:
            raise BadInputError(f"{self.data.origin}: a box of class {largest}, but the model's head has "
                                f"{classes} classes")

    def _call_metric(self, run: Run) -> float:
        try:
            value = self.data.metric(run)  # type: ignore[misc]
        except EdgepipeError:
            raise
        except Exception as exc:
            raise BadInputError(f"{self.data.origin} raised {type(exc).__name__}: "
                                f"{first_line(exc)}") from None
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise BadInputError(f"{self.data.origin} returned {value!r}; expected a number")
        return float(value)

    def _map(self, outputs: list[list[np.ndarray]], indices: list[int] | None = None) -> tuple[float, float]:
        detection = self.data.detection
        assert detection is not None
        chosen = range(len(outputs)) if indices is None else indices
        found = [detect(outputs[i][0], score_threshold=EVAL_SCORE_THRESHOLD, iou_threshold=EVAL_IOU_THRESHOLD,
                        max_detections=100, classes=None, multi_label=True) for i in chosen]
        return mean_average_precision([self.data.samples[i].boxes for i in chosen], found,
                                      detection.class_count)

    def _labelled_scores(self, outputs: list[list[np.ndarray]], fidelity: dict[str, float] | None) -> Scores:
        top1 = top5 = None
        if self.data.has_boxes:
            map50, map50_95 = self._map(outputs)
            return Scores(map50=map50, map50_95=map50_95,
                          metric=self._float_metric if fidelity is None else None, **(fidelity or {}))
        if self.data.has_labels:
            labels = [s.label for s in self.data.samples]
            first = [o[0] for o in outputs]
            top1 = 100.0 * float(np.mean([_topk(o, y, 1) for o, y in zip(first, labels, strict=True)]))
            if first[0].size >= 5:
                top5 = 100.0 * float(np.mean([_topk(o, y, 5) for o, y in zip(first, labels, strict=True)]))
        return Scores(top1=top1, top5=top5, metric=self._float_metric if fidelity is None else None,
                      **(fidelity or {}))

    def score(self, run: Run) -> Scores:
        outputs = _outputs_of(run, self.data)
        cosines = [min(cosine(r.ravel(), c.ravel()) for r, c in zip(ref, got, strict=True))
                   for ref, got in zip(self._float_outputs, outputs, strict=True)]
        sqnr = None  # no samples, no SQNR (not one computed on placeholder zeros)
        if outputs:
            sqnr = _sqnr_db(np.concatenate([r[0].ravel() for r in self._float_outputs]),
                            np.concatenate([g[0].ravel() for g in outputs]))
        agreement = None  # a detector's raw head has no one winning class
        if outputs and self._float_outputs[0][0].size > 1 and not self.data.has_boxes:
            agreement = float(np.mean([int(np.argmax(r[0]) == np.argmax(g[0]))
                                       for r, g in zip(self._float_outputs, outputs, strict=True)]))
        fidelity = {"mean_cosine": float(np.mean(cosines)) if cosines else None,
                    "min_cosine": float(np.min(cosines)) if cosines else None,
                    "sqnr_db": sqnr, "top1_agreement": agreement}
        scores = self._labelled_scores(outputs, fidelity)
        if self.data.metric is not None:
            scores = Scores(**{**scores.__dict__, "metric": self._call_metric(run)})
        return scores

    @property
    def float_metric(self) -> float | None:
        return self._float_metric

    @property
    def primary(self) -> str:
        """The one number an accuracy-control loop optimizes: top1, map (mAP@0.5:0.95), metric, or cosine."""
        if self.data.has_labels:
            return "top1"
        if self.data.has_boxes:
            return "map"
        return "metric" if self.data.metric is not None else "cosine"

    def primary_value(self, scores: Scores) -> float:
        """The primary number of a candidate's scores (top-1 %, mAP points, the metric, or mean cosine)."""
        value = {"top1": scores.top1, "map": scores.map50_95, "metric": scores.metric,
                 "cosine": scores.mean_cosine}[self.primary]
        return float(value or 0.0)

    @property
    def float_primary(self) -> float:
        return self.primary_value(self.reference_scores())

    def reference_scores(self) -> Scores:
        """The float model scored against itself, without running it again."""
        return Scores(**{**self.float_scores.__dict__, "mean_cosine": 1.0, "min_cosine": 1.0,
                         "sqnr_db": math.inf, "top1_agreement": 1.0 if self._float_outputs
                         and self._float_outputs[0][0].size > 1 and not self.data.has_boxes else None})

    def primary_on(self, run: Run, indices: list[int]) -> float:
        """The primary number on a subset of the evaluation samples (all of them for a metric)."""
        if self.primary == "metric":
            return self._call_metric(run)
        if self.primary == "map":
            outputs = {i: [np.asarray(v, np.float64) for v in run(self.data.samples[i].feed).values()]
                       for i in indices}
            return self._map([outputs.get(i, []) for i in range(len(self.data.samples))], indices)[1]
        values = []
        for index in indices:
            got = [np.asarray(v, np.float64) for v in run(self.data.samples[index].feed).values()]
            if self.primary == "top1":
                values.append(float(_topk(got[0], self.data.samples[index].label, 1)))
            else:
                values.append(min(cosine(r.ravel(), g.ravel())
                                  for r, g in zip(self._float_outputs[index], got, strict=True)))
        return float(np.mean(values)) if values else 0.0
