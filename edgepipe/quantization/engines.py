"""The int8 engines behind one interface: write a candidate with some nodes kept in float, rank
a candidate's tensors by harm, and (NNCF on OpenVINO) run the library's own accuracy control.

The quantize stage drives every engine with the same loop (stages/quantize.py) and the
pipeline judges every candidate the same way; an engine only writes and ranks. Adding
one is one class here and one name in `QuantizeSettings.engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from edgepipe import onnx_model
from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.errors import BadInputError
from edgepipe.quantization import sensitivity
from edgepipe.quantization.qdq import (
    AccuracyControl,
    write_dynamic,
    write_nncf,
    write_nncf_openvino,
    write_qdq,
)
from edgepipe.quantization.ranges import Method
from edgepipe.quantization.scheme import Int8Scheme

Feed = dict[str, Any]


@dataclass(frozen=True)
class Int8Job:
    """What every engine is given: the float model (after ORT's pre-processing), its samples
    and the target's int8 scheme."""

    prepared: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    samples: Callable[[], Iterable[Feed]]  # calibration samples, a fresh iterator each call
    count: int  # calibration samples to use
    scheme: Int8Scheme
    method: Method
    per_channel: bool
    transformer: bool
    excluded: tuple[str, ...] = ()  # nodes the profile keeps in float
    only: tuple[str, ...] | None = None  # quantize only these nodes (transformer weight MatMuls)
    ranges: Path | None = None  # onnxruntime's calibration ranges
    probe: Sequence[Feed] = ()  # samples to rank tensors on
    bias_correction: bool = True  # engines without their own (onnxruntime): ours, bias_correction.py
    # TFLite converters: the target's [lower], the torch source, the stages before
    tflite: dict[str, Any] = field(default_factory=dict)
    float_head: bool = False  # a detector's head stays float (engines that cannot take `excluded`)


class Int8Engine(Protocol):
    name: ClassVar[str]
    suffix: ClassVar[str]  # of the file it writes: .onnx, .xml, .tflite
    ranks: ClassVar[bool]  # can say which tensors hurt most (per-layer fallback possible)

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path) -> Artifact: ...

    def rank(self, job: Int8Job, candidate: Artifact) -> list[sensitivity.QuantizedTensor]:
        """The candidate's quantized tensors, worst first; [] where the engine cannot tell."""
        ...


def _qdq_artifact(path: Path, job: Int8Job) -> Artifact:
    return Artifact(path, "onnx", job.inputs, onnx_model.graph_outputs(onnx_model.load_plain(path)))


class _RanksQdq:
    """Ranking for engines that write QDQ ONNX: each quantized tensor against its own int8 copy."""

    ranks = True

    def rank(self, job: Int8Job, candidate: Artifact) -> list[sensitivity.QuantizedTensor]:
        return sensitivity.measure(job.prepared, candidate.path, list(job.probe))


class OnnxRuntimeStatic(_RanksQdq):
    name = "onnxruntime"
    suffix = ".onnx"
    BIAS_SAMPLES = 32  # input means settle well before this on ImageNet-style data

    def __init__(self) -> None:
        self._bias_samples: list[Feed] | None = None

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path) -> Artifact:
        assert job.ranges is not None
        written = path.with_name(path.stem + "-uncorrected.onnx") if job.bias_correction else path
        write_qdq(job.prepared, job.ranges, written, scheme=job.scheme, method=job.method,
                  per_channel=job.per_channel, exclude=[*job.excluded, *kept_float], only=job.only)
        if not job.bias_correction:
            return _qdq_artifact(path, job)
        from itertools import islice

        from edgepipe.quantization.bias_correction import correct_biases

        if self._bias_samples is None:
            self._bias_samples = list(islice(job.samples(), self.BIAS_SAMPLES))
        facts = correct_biases(job.prepared, written, self._bias_samples, path)
        written.unlink()
        artifact = _qdq_artifact(path, job)
        return Artifact(artifact.path, artifact.format, artifact.inputs, artifact.outputs,
                        facts={"bias_correction": facts})


class OnnxRuntimeDynamic:
    """Transformers on targets that want dynamic int8 MatMuls: nothing static to rank."""

    name = "onnxruntime"
    suffix = ".onnx"
    ranks = False

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path) -> Artifact:
        write_dynamic(job.prepared, path, per_channel=job.per_channel, exclude=[*job.excluded, *kept_float],
                      only=job.only)
        return _qdq_artifact(path, job)

    def rank(self, job: Int8Job, candidate: Artifact) -> list[sensitivity.QuantizedTensor]:
        return []


class Nncf(_RanksQdq):
    """QDQ ONNX written by NNCF's ONNX backend (its presets, bias correction, SmoothQuant)."""

    name = "nncf"
    suffix = ".onnx"

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path) -> Artifact:
        write_nncf(job.prepared, path, job.samples, scheme=job.scheme, count=job.count,
                   transformer=job.transformer, exclude=[*job.excluded, *kept_float])
        return _qdq_artifact(path, job)


class NncfOpenVino:
    """An int8 OpenVINO IR written by NNCF on the OpenVINO model; NNCF ranks its own layers in
    its accuracy control, so no per-tensor ranking here."""

    name = "nncf-openvino"
    suffix = ".xml"
    ranks = False

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path,
              accuracy: AccuracyControl | None = None) -> Artifact:
        write_nncf_openvino(job.prepared, path, job.samples, scheme=job.scheme, count=job.count,
                            transformer=job.transformer, exclude=[*job.excluded, *kept_float],
                            accuracy=accuracy)
        return Artifact(path, "openvino", job.inputs, job.outputs, (path.with_suffix(".bin"),))

    def rank(self, job: Int8Job, candidate: Artifact) -> list[sensitivity.QuantizedTensor]:
        return []

    @staticmethod
    def fake_quantize_count(artifact: Artifact) -> int:
        from edgepipe.extras import require

        ov = require("openvino", "[quantize] engine = \"nncf-openvino\"")
        return sum(op.get_type_name() == "FakeQuantize" for op in ov.Core().read_model(
            str(artifact.path)).get_ops())


class Litert:
    """The TFLite converters quantize the whole graph themselves: no single layer can be kept."""

    name = "litert"
    suffix = ".tflite"
    ranks = False

    def write(self, job: Int8Job, kept_float: Sequence[str], path: Path) -> Artifact:
        from edgepipe.quantization.litert import write_tflite_int8

        facts = write_tflite_int8(job.prepared, path, job.samples, per_channel=job.per_channel,
                                  exclude=[*job.excluded, *kept_float], inputs=job.inputs,
                                  float_head=job.float_head, **job.tflite)
        return Artifact(path, "tflite", job.inputs, job.outputs, facts=facts)

    def rank(self, job: Int8Job, candidate: Artifact) -> list[sensitivity.QuantizedTensor]:
        return []


ENGINES: dict[str, type] = {"onnxruntime": OnnxRuntimeStatic, "nncf": Nncf, "nncf-openvino": NncfOpenVino,
                            "litert": Litert}
# What the artifact of an engine can be lowered by: None = every backend.
ENGINE_BACKENDS = {"nncf-openvino": "openvino", "litert": "tflite"}


def engine_for(name: str, target: str, backend: str, dynamic: bool) -> Int8Engine:
    """The engine the profile (or the target's [int8] engine) names, checked against the target."""
    needed = ENGINE_BACKENDS.get(name)
    if needed is not None and needed != backend:
        what = {"openvino": "an OpenVINO IR", "tflite": "a .tflite"}[needed]
        raise BadInputError(f"[quantize] engine \"{name}\" writes {what}; target '{target}' uses {backend}")
    if dynamic:
        return OnnxRuntimeDynamic()
    return ENGINES[name]()
