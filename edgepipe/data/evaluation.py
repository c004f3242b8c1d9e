"""Evaluation data (`--eval`): what a transformed model is judged on.

`--eval` takes an image folder per class (ImageFolder layout), an `.npz` (or a
folder of them) with the inputs and a `labels` array, images with labelled boxes
(COCO `instances.json` or YOLO `labels/`: edgepipe.data.detection_sets), or `file.py:fn`,
a metric called as `fn(run) -> float` where `run(feed) -> {output name: array}` (higher is
better). Without `--eval`, calibration samples stand in, for fidelity only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgepipe.artifact import TensorSpec
from edgepipe.data.detection_sets import DetectionSet, is_detection_set, open_detection_set
from edgepipe.data.preprocessing import ImagePreprocessing
from edgepipe.data.samples import Feed, LabelledSample, SampleSource, open_samples
from edgepipe.errors import BadInputError
from edgepipe.python_callable import load_python_callable, split_spec

Run = Callable[[Feed], dict[str, np.ndarray]]


@dataclass(frozen=True)
class EvalData:
    """What a model is judged on: samples (maybe labelled) and/or a user metric."""

    origin: str
    samples: list[LabelledSample] = field(default_factory=list)
    metric: Callable[[Run], float] | None = None
    detection: DetectionSet | None = None  # labelled boxes: scored by mAP

    @property
    def has_labels(self) -> bool:
        return bool(self.samples) and all(s.label is not None for s in self.samples)

    @property
    def has_boxes(self) -> bool:
        return self.detection is not None and bool(self.samples)


def is_detection_eval(spec: str | Path | None) -> bool:
    """Whether `--eval` names images with labelled boxes (a detector's data)."""
    return spec is not None and not split_spec(str(spec)) and is_detection_set(Path(spec))


def open_eval(spec: str | Path, specs: tuple[TensorSpec, ...], *, limit: int,
              preprocess: ImagePreprocessing | None = None, seed: int = 0) -> EvalData:
    """Read up to `limit` evaluation samples into memory (they are reused for every candidate)."""
    text = str(spec)
    if split_spec(text):
        return EvalData(origin=f"metric {text}", metric=load_python_callable(text))
    if is_detection_eval(text):
        if len(specs) != 1:
            raise BadInputError(f"--eval {text}: detection images fit a single-input model; this one has "
                                f"inputs {', '.join(s.name for s in specs)}")
        boxes = open_detection_set(Path(text), specs[0], preprocess)
        samples = [LabelledSample(feed, None, truth) for feed, truth in boxes.samples(specs[0], limit)]
        origin = boxes.origin if len(samples) == len(boxes.items) else f"{len(samples)} of {boxes.origin}"
        return EvalData(origin=origin, samples=samples, detection=boxes)
    source: SampleSource = open_samples(text, specs, flag="--eval", preprocess=preprocess, seed=seed,
                                        with_labels=True)
    if source.is_random:
        raise BadInputError("--eval random: evaluation needs real data")
    samples = list(source.labelled(limit))
    labelled = sum(s.label is not None for s in samples)
    if 0 < labelled < len(samples):
        raise BadInputError(f"--eval {text}: some samples have labels and some do not")
    return EvalData(origin=source.describe(len(samples)), samples=samples)


def calibration_eval(samples: Iterator[Feed], origin: str) -> EvalData:
    """Fallback when no `--eval` is given: fidelity only, on calibration samples."""
    return EvalData(origin=origin, samples=[LabelledSample(feed, None) for feed in samples])


def eval_data_for(eval_spec: str | None, calibration: SampleSource | None, specs: tuple[TensorSpec, ...], *,
                  limit: int, preprocess: ImagePreprocessing | None, seed: int,
                  fallback: Sequence[Feed] = (), fallback_origin: str = "") -> EvalData | None:
    """`--eval` data where given, else up to `limit` calibration samples (64 if they are random,
    which only measure fidelity), else `fallback` samples (e.g. the parity samples), else None.

    A user metric (`--eval file.py:fn`) sees no inputs of ours, so the fidelity checks (cosine,
    SQNR, top-1 agreement, and with them `min_cosine`) run on those same samples beside it."""
    data = None
    if eval_spec is not None:
        data = open_eval(eval_spec, specs, limit=limit, preprocess=preprocess, seed=seed)
        if data.samples:
            return data
    if calibration is not None:
        samples = list(calibration.samples(min(limit, 64) if calibration.is_random else limit))
        origin = f"{calibration.describe(len(samples))} (calibration data)"
    elif fallback:
        samples, origin = list(fallback), fallback_origin
    else:
        return data
    if data is not None:  # a metric: fidelity on the samples, the metric on the user's own data
        return EvalData(origin=f"{data.origin}; fidelity on {origin}",
                        samples=[LabelledSample(feed, None) for feed in samples], metric=data.metric)
    return calibration_eval(iter(samples), origin)
