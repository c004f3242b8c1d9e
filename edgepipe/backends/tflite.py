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

import json
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.backends.base import LowerHints, Runner
from edgepipe.errors import BackendError
from edgepipe.extras import require
from edgepipe.settings import StrictModel

ARTIFACT_NAME = "model.tflite"
IO_SUFFIX = ".io.json"  # beside a .tflite the quantize stage wrote: the source model's I/O specs


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


def _run_module():
    from edgepipe.device import run

    return run


def _interpreter(path: Path, runtime: TfliteRuntimeSettings, delegate: str = "none"):
    run = _run_module()
    require("ai_edge_litert", "running TFLite models")
    try:
        return run.tflite_interpreter(path.read_bytes(), runtime.threads, runtime.xnnpack, delegate)
    except run.RunError as exc:
        raise BackendError(str(exc)) from None


def _quantization(details: dict) -> list[float] | None:
    scale, zero = details["quantization"]
    return [float(scale), int(zero)] if scale else None


def _match(details: list[dict], specs: tuple[TensorSpec, ...]) -> list[dict]:
    """Model tensors in the order of `specs`: by name where the converter kept it, else by position."""
    by_name = {}
    for entry in details:
        bare = entry["name"].removeprefix("serving_default_").split(":")[0]
        by_name.setdefault(bare, entry)
    if all(spec.name in by_name for spec in specs):
        return [by_name[spec.name] for spec in specs]
    if len(details) != len(specs):
        raise BackendError(f"the .tflite has {len(details)} tensors where the model has {len(specs)}")
    return list(details)


def describe_io(interpreter, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> dict:
    """The manifest's record of how the model's own I/O relates to the manifest's inputs."""
    def entry(spec: TensorSpec, details: dict) -> dict[str, Any]:
        model_shape = [int(d) for d in details["shape"]]
        channel_last = (len(model_shape) >= 3 and list(spec.shape) != model_shape
                        and [spec.shape[0], *spec.shape[2:], spec.shape[1]] == model_shape)
        return {"name": spec.name, "tensor": details["name"], "shape": list(spec.shape),
                "model_shape": model_shape, "model_dtype": np.dtype(details["dtype"]).name,
                "layout": ("NHWC" if channel_last else spec.layout) if len(model_shape) == 4 else spec.layout,
                "quantization": _quantization(details)}

    matched_inputs = _match(interpreter.get_input_details(), inputs)
    matched_outputs = _match(interpreter.get_output_details(), outputs)
    return {"inputs": [entry(s, d) for s, d in zip(inputs, matched_inputs, strict=True)],
            "outputs": [entry(s, d) for s, d in zip(outputs, matched_outputs, strict=True)]}


class TfliteRunner(Runner):
    """Feeds in the source layout and dtype, as every runner takes them; see TfliteModel."""

    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                 runtime: TfliteRuntimeSettings) -> None:
        super().__init__(inputs)
        self.path, self.outputs, self.runtime = path, outputs, runtime

    def _activate(self) -> None:
        run = _run_module()
        self._interp, _, _ = _interpreter(self.path, self.runtime)
        outputs = self.outputs or tuple(
            TensorSpec(d["name"], tuple(int(x) for x in d["shape"]), "float32")
            for d in self._interp.get_output_details())
        io = describe_io(self._interp, self.inputs, outputs)
        self._inputs = list(zip(io["inputs"], _match(self._interp.get_input_details(), self.inputs),
                                strict=True))
        self._outputs = list(zip(io["outputs"], _match(self._interp.get_output_details(), outputs),
                                 strict=True))
        self._run = run

    def _deactivate(self) -> None:
        self._interp = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        run = self._run
        try:
            return run.tflite_invoke(self._interp, self._inputs, self._outputs, dict(feed))
        except (run.RunError, ValueError, RuntimeError) as exc:
            raise BackendError(f"LiteRT failed running {self.path.name}: {exc}") from None


def write_io_specs(path: Path, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
    """Beside a .tflite written before lowering, so a runner knows the source's output layout."""
    (path.parent / (path.name + IO_SUFFIX)).write_text(json.dumps(
        {"inputs": [s.to_json() for s in inputs], "outputs": [s.to_json() for s in outputs]}))


def _read_io_specs(path: Path) -> tuple[TensorSpec, ...]:
    sidecar = path.parent / (path.name + IO_SUFFIX)
    if not sidecar.is_file():
        return ()
    data = json.loads(sidecar.read_text())
    return tuple(TensorSpec(o["name"], tuple(o["shape"]), o["dtype"], o.get("layout"))
                 for o in data["outputs"])


class TfliteBackend:
    name = "tflite"
    extra = "tflite"
    runtime_module = "ai_edge_litert"
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
            recorded = json.loads((model.path.parent / (model.path.name + ".route.json")).read_text())
            route, scheme = recorded["route"], recorded["scheme"]
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
        outputs = model.outputs or _read_io_specs(model.path)
        interpreter, runtime_name, version = _interpreter(out, runtime)
        io = describe_io(interpreter, model.inputs, outputs)
        if runtime.delegate != "none":
            warnings.append(f"the target's {runtime.delegate} delegate is applied on the device only; the "
                            "build host checked the model on LiteRT's CPU kernels")
        artifact = Artifact(out, self.name, model.inputs, outputs)
        facts = {"interpreter": f"{runtime_name} {version}", "host": platform.machine(),
                 "tflite": {**route, "scheme": scheme, "io": io}}
        return artifact, warnings, facts

    def runner(self, artifact: Artifact, runtime: TfliteRuntimeSettings, precision: str = "f32") -> Runner:
        return TfliteRunner(artifact.path, artifact.inputs, artifact.outputs, runtime)

    def onnx_runner(self, model: Path, inputs: tuple[TensorSpec, ...], runtime: TfliteRuntimeSettings,
                    precision: str = "f32") -> Runner:
        """A .tflite from the quantize stage runs in LiteRT; a float ONNX intermediate in ONNX
        Runtime as written (nothing of it reaches the device as ONNX)."""
        if model.suffix == ".tflite":
            return TfliteRunner(model, inputs, _read_io_specs(model), runtime)
        from edgepipe.backends.onnxruntime import OnnxRuntimeRunner, OnnxRuntimeRuntimeSettings

        return OnnxRuntimeRunner(model, inputs, OnnxRuntimeRuntimeSettings(), level="disabled")

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
