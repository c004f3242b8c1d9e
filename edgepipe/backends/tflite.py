"""TFLite / LiteRT: a `.tflite` for phones and ARM boards, run with the LiteRT interpreter.

Two official converters (see `tflite/convert.py`): litert-torch for PyTorch modules,
onnx2tf for ONNX. int8 is not the quantize stage's QDQ ONNX here: both converters
quantize themselves (PT2E, TensorFlow's full-integer converter), so the quantize stage
hands them the calibration samples (target `[int8] engine = "litert"`) and scores the
`.tflite` they write, and lowering then ships that file.

TFLite models are channel-last inside. Which layout and dtype the model's own I/O
has, and how to get there from the manifest's inputs, is recorded in the manifest
(`backend.tflite.io`); the runner here and the bundle's run.py both apply it.
"""

from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgepipe.artifact import Artifact
from edgepipe.backends.base import LowerHints, Runner, artifact_runner, specs_of
from edgepipe.extras import require
from edgepipe.runtime.runners.tflite import describe_io, interpreter
from edgepipe.settings import StrictModel

ARTIFACT_NAME = "model.tflite"


class TfliteLowerSettings(StrictModel):
    converter: Literal["auto", "litert-torch", "onnx2tf"] = Field(
        "auto", description="auto: litert-torch for nn.Module sources, onnx2tf otherwise")
    channel_last_io: bool = Field(False, description="model inputs NHWC, so device code feeds camera "
                                                     "frames as they come")
    int8_io: Literal["float32", "int8", "uint8"] = Field(
        "float32", description="I/O dtype of an int8 model: float32, or integer for MCUs/NPUs")


class TfliteRuntimeSettings(StrictModel):
    threads: int = Field(4, ge=0, description="interpreter threads; 0 = LiteRT's choice")
    xnnpack: bool = Field(True, description="LiteRT's default CPU delegate")
    delegate: Literal["none", "gpu", "nnapi", "edgetpu", "hexagon"] = Field(
        "none", description="a hardware delegate the device must provide (run.py exits 3 without it)")


def _interpreter(path: Path, runtime: TfliteRuntimeSettings):
    require("ai_edge_litert", "running TFLite models")
    return interpreter(path.read_bytes(), runtime.threads, runtime.xnnpack, runtime.delegate)


class TfliteBackend:
    name = "tflite"
    extra = "tflite"
    runtime_module = "ai_edge_litert"
    # onnx2tf writes one static shape, and the LiteRT interpreter is resized rather than built
    # for a range; a bundle that ships for one size says so by refusing a range.
    shape_ranges = False
    LowerSettings = TfliteLowerSettings
    RuntimeSettings = TfliteRuntimeSettings
    precisions = ("f32", "f16")

    def lower(self, model: Artifact, lower: TfliteLowerSettings, runtime: TfliteRuntimeSettings,
              out_dir: Path, precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, Any]]:
        from edgepipe.tflite import convert

        hints = hints or LowerHints()
        out = out_dir / ARTIFACT_NAME
        warnings: list[str] = []
        if model.format == self.name:  # int8: the quantize stage's converter already wrote it
            shutil.copyfile(model.path, out)
            route, scheme = model.facts["tflite_route"], model.facts["tflite_scheme"]
        else:
            choice = convert.choose_converter(lower.converter, hints.source_kind, hints.source_module,
                                              hints.stages, precision)
            route = {"converter": choice.converter, "reason": choice.reason}
            scheme = {"weights": "float16" if precision == "f16" else "float32", "activations": "float32",
                      "io": "float32"}
            if choice.converter == "litert-torch":
                convert.convert_with_litert_torch(hints.source_module, hints.example_args, out,
                                                  channel_last=lower.channel_last_io)
            else:
                convert.convert_with_onnx2tf(model.path, hints.work_dir / "onnx2tf", out, precision=precision,
                                             io_dtype="float32", channel_last=lower.channel_last_io,
                                             input_shapes={s.name: tuple(s.shape) for s in model.inputs})
        outputs = model.outputs
        # On the host's CPU kernels: a target's hardware delegate exists on the device only.
        built, runtime_name, version = _interpreter(out, runtime.model_copy(update={"delegate": "none"}))
        io = describe_io(built, specs_of(model.inputs), specs_of(outputs))
        if runtime.delegate != "none":
            warnings.append(f"the target's {runtime.delegate} delegate is applied on the device only; the "
                            "build host checked the model on LiteRT's CPU kernels")
        artifact = Artifact(out, self.name, model.inputs, outputs)
        facts = {"interpreter": f"{runtime_name} {version}", "host": platform.machine(),
                 "tflite": {**route, "scheme": scheme, "io": io}}
        return artifact, warnings, facts

    def runner(self, artifact: Artifact, runtime: TfliteRuntimeSettings, precision: str = "f32") -> Runner:
        """The host checks on LiteRT's CPU kernels: a target's delegate exists on the device only."""
        return artifact_runner(self.name, artifact, runtime, precision, delegate="none")

    def candidate_runner(self, artifact: Artifact, runtime: TfliteRuntimeSettings,
                         precision: str = "f32") -> Runner:
        """A .tflite from the quantize stage runs in LiteRT; a float ONNX intermediate in ONNX
        Runtime as written (nothing of it reaches the device as ONNX)."""
        if artifact.format == self.name:
            return self.runner(artifact, runtime, precision)
        from edgepipe.backends.onnxruntime import exact_runner

        return exact_runner(artifact.path, artifact.inputs)

    def host_precisions(self, runtime: TfliteRuntimeSettings) -> tuple[str, ...]:
        """LiteRT runs f32 everywhere; f16 weights are dequantized on CPUs (size, not speed)."""
        return ("f32", "f16")

    def runtime_versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for package in ("ai-edge-litert", "litert-torch", "onnx2tf", "tensorflow"):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                continue
        return found
