"""OpenVINO: the pipeline's ONNX converted to IR (model.xml + model.bin), run on CPU/GPU/NPU.

int8 models arrive as QDQ ONNX from the quantize stage, which OpenVINO reads as its own
quantized graph (measured: ResNet-18 on 2 AVX2 threads, 9.65 ms from edgepipe's QDQ vs
9.57 ms for `nncf.quantize` by hand vs 20.3 ms f32).

Two traps handled here: `ov.save_model` compresses weights to fp16 unless told not
to, and on CPUs with bf16/AMX OpenVINO runs an "f32" model in bf16 unless
`INFERENCE_PRECISION_HINT` says otherwise. So weights are compressed only for an f16
build, the precision hint is always explicit, and what actually ran is recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.backends.base import LowerHints, Runner
from edgepipe.errors import BackendError, first_line
from edgepipe.extras import require
from edgepipe.settings import StrictModel

ARTIFACT_NAME = "model.xml"
WEIGHTS_NAME = "model.bin"
Precision = Literal["f32", "f16", "bf16"]


class OpenVinoLowerSettings(StrictModel):
    """Nothing to choose at conversion: precision comes from the profile's [lower] table."""


class OpenVinoRuntimeSettings(StrictModel):
    device: str = Field("CPU", description="CPU, GPU or NPU")
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    threads: int = Field(0, ge=0, description="INFERENCE_NUM_THREADS; 0 = OpenVINO's choice")
    streams: int = Field(1, ge=0, description="NUM_STREAMS; 0 = OpenVINO's choice")
    cpu_pinning: bool | None = Field(None, description="ENABLE_CPU_PINNING; unset = OpenVINO's default")
    cache_dir: str = Field("", description="compiled-model cache folder on the device; empty = none")


def _ov(purpose: str):
    return require("openvino", purpose)


def compile_config(runtime: OpenVinoRuntimeSettings, precision: str, threads: int | None = None,
                   ) -> dict[str, Any]:
    """The compile_model config; the device's own defaults only where the target says so."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": runtime.performance_hint,
                              "INFERENCE_PRECISION_HINT": precision}
    count = runtime.threads if threads is None else threads
    if count:
        config["INFERENCE_NUM_THREADS"] = count
    if runtime.streams:
        config["NUM_STREAMS"] = runtime.streams
    if runtime.cpu_pinning is not None and runtime.device == "CPU":
        config["ENABLE_CPU_PINNING"] = runtime.cpu_pinning
    if runtime.cache_dir:
        config["CACHE_DIR"] = runtime.cache_dir
    return config


def compile_model(path: Path, runtime: OpenVinoRuntimeSettings, precision: str,
                  threads: int | None = None):
    ov = _ov("running OpenVINO models")
    core = ov.Core()
    if runtime.device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
        raise BackendError(f"OpenVINO device {runtime.device} is not present on this machine "
                           f"(found: {', '.join(core.available_devices)})")
    try:
        return core.compile_model(str(path), runtime.device, compile_config(runtime, precision, threads))
    except Exception as exc:
        raise BackendError(f"OpenVINO could not compile {path.name} for {runtime.device}: "
                           f"{first_line(exc)}") from None


def ran_with(compiled) -> dict[str, str]:
    """What OpenVINO actually did, as opposed to what was asked."""
    facts = {}
    for key in ("INFERENCE_PRECISION_HINT", "EXECUTION_DEVICES", "INFERENCE_NUM_THREADS", "NUM_STREAMS"):
        try:
            value = compiled.get_property(key)
        except Exception:  # not every device reports every property
            continue
        if hasattr(value, "get_type_name"):  # an ov.Type: "f32", "bf16"
            value = value.get_type_name()
        facts[key] = ",".join(value) if isinstance(value, list) else str(value)
    return facts


class OpenVinoRunner(Runner):
    def __init__(self, path: Path, inputs: tuple[TensorSpec, ...], runtime: OpenVinoRuntimeSettings,
                 precision: str = "f32") -> None:
        super().__init__(inputs)
        self.path, self.runtime, self.precision = path, runtime, precision
        self._request = None

    def _activate(self) -> None:
        compiled = compile_model(self.path, self.runtime, self.precision)
        self._names = [next(iter(o.get_names()), f"output_{i}") for i, o in enumerate(compiled.outputs)]
        self._request = compiled.create_infer_request()

    def _deactivate(self) -> None:
        self._request = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._request.infer(dict(feed))
        except Exception as exc:
            raise BackendError(f"OpenVINO failed running {self.path.name}: {first_line(exc)}") from None
        return {name: np.asarray(results[index]) for index, name in enumerate(self._names)}


class OpenVinoBackend:
    name = "openvino"
    extra = "openvino"
    runtime_module = "openvino"
    LowerSettings = OpenVinoLowerSettings
    RuntimeSettings = OpenVinoRuntimeSettings
    precisions = ("f32", "f16", "bf16")

    def lower(self, model: Artifact, lower: OpenVinoLowerSettings, runtime: OpenVinoRuntimeSettings,
              out_dir: Path, precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, str]]:
        ov = _ov("lowering to OpenVINO")
        try:
            # An IR arrives from the quantize stage's nncf-openvino engine; ONNX otherwise.
            converted = (ov.Core().read_model(str(model.path)) if model.format == self.name
                         else ov.convert_model(str(model.path)))
        except Exception as exc:
            raise BackendError(f"OpenVINO could not convert {model.path.name}: {first_line(exc)}") from None
        out = out_dir / ARTIFACT_NAME
        ov.save_model(converted, str(out), compress_to_fp16=precision == "f16")
        warnings = []
        compiled = compile_model(out, runtime, precision)
        facts = ran_with(compiled)
        ran = facts.get("INFERENCE_PRECISION_HINT", precision)
        if ran != precision:
            warnings.append(f"OpenVINO on this build host runs precision {ran} when {precision} was "
                            "asked (the CPU lacks it); the device may differ")
        artifact = Artifact(out, self.name, model.inputs, model.outputs, (out_dir / WEIGHTS_NAME,))
        return artifact, warnings, facts

    def runner(self, artifact: Artifact, runtime: OpenVinoRuntimeSettings, precision: str = "f32") -> Runner:
        return OpenVinoRunner(artifact.path, artifact.inputs, runtime, precision)

    def onnx_runner(self, model: Path, inputs: tuple[TensorSpec, ...], runtime: OpenVinoRuntimeSettings,
                    precision: str = "f32") -> Runner:
        """OpenVINO compiles ONNX directly, with the kernels its IR would get."""
        return OpenVinoRunner(model, inputs, runtime, precision)

    def host_precisions(self, runtime: OpenVinoRuntimeSettings) -> tuple[str, ...]:
        """f32, plus bf16/f16 where the device reports them (AVX-512 BF16/AMX, GPUs)."""
        ov = _ov("checking OpenVINO device capabilities")
        core = ov.Core()
        if runtime.device not in core.available_devices:
            return ()
        capabilities = set(core.get_property(runtime.device, "OPTIMIZATION_CAPABILITIES"))
        return ("f32", *(p for p, cap in (("bf16", "BF16"), ("f16", "FP16")) if cap in capabilities))

    def runtime_versions(self) -> dict[str, str]:
        try:
            import openvino
        except ImportError:
            return {}
        return {"openvino": openvino.__version__.split("-")[0]}
