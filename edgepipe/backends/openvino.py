"""OpenVINO: the pipeline's ONNX converted to IR (model.xml + model.bin), run on CPU/GPU/NPU.

int8 models arrive as QDQ ONNX from the quantize stage, which OpenVINO reads as its own
quantized graph (measured: ResNet-18 on 2 AVX2 threads, 9.65 ms from edgepipe's QDQ vs
9.57 ms for `nncf.quantize` by hand vs 20.3 ms f32).

`ov.save_model` compresses weights to fp16 unless told not to, so weights are
compressed only for f16 and bf16 builds. The compile config (precision hint always explicit,
since a bf16/AMX CPU runs an "f32" model in bf16 otherwise) is the runtime's
(`edgepipe.runtime.runners.openvino`), shared with the bundle's run.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepipe.artifact import Artifact
from edgepipe.backends.base import LowerHints, Runner, artifact_runner
from edgepipe.errors import BackendError, first_line
from edgepipe.extras import require
from edgepipe.runtime.runners.openvino import compile_model, ran_with
from edgepipe.settings import StrictModel

ARTIFACT_NAME = "model.xml"
WEIGHTS_NAME = "model.bin"
Precision = Literal["f32", "f16", "bf16"]


def conversion_failure(exc: BaseException) -> str:
    """The frontend's report spans many lines and opens with a source location; the user needs the
    ops it could not convert and the first reason, on one line."""
    text = str(exc)
    failed = re.search(r"Conversion is failed for: ([^\n]+)", text)
    if not failed:
        return first_line(exc)
    block = text.split("with a message:", 1)[-1].split("\n\n", 1)[0]
    reasons = [line.strip() for line in block.splitlines() if line.strip()]
    node = re.search(r"ONNX node '<Node\((\w+)\): ([^>]+)>'", block)
    where = f" (node {node.group(2)}: {reasons[-1]})" if node and reasons else ""
    return f"its ONNX frontend does not convert {failed.group(1).strip()}{where}"


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


def _has_qdq(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _save_reproducibly(ov, model, out: Path, compress_to_fp16: bool) -> None:
    """Save the IR with the default names OpenVINO gave unnamed ops (`Constant_36998`) renumbered
    in graph order: they come from a process-wide counter, so the same model saved after more or
    fewer other models (NNCF, the build's own checks) would otherwise differ byte for byte."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        first = Path(scratch) / out.name
        ov.save_model(model, str(first), compress_to_fp16=compress_to_fp16)  # inserts its own Converts
        saved = ov.Core().read_model(str(first))
        for index, op in enumerate(saved.get_ordered_ops()):
            if re.fullmatch(rf"{re.escape(op.get_type_name())}_\d+", op.get_friendly_name()):
                op.set_friendly_name(f"{op.get_type_name()}_{index}")
        ov.save_model(saved, str(out), compress_to_fp16=False)  # weights already as asked


class OpenVinoBackend:
    name = "openvino"
    extra = "openvino"
    runtime_module = "openvino"
    shape_ranges = True
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
            raise BackendError(f"OpenVINO could not convert {model.path.name}: {conversion_failure(exc)}"
                               ) from None
        out = out_dir / ARTIFACT_NAME
        # f16 and bf16 builds keep their weights as f16 (half the IR; OpenVINO decompresses them at
        # load, and a bf16 model loses no more to f16 weights than to its own bf16 arithmetic, which
        # the parity check measures); f32 keeps f32 weights.
        _save_reproducibly(ov, converted, out, compress_to_fp16=precision in ("f16", "bf16"))
        warnings = []
        compiled = compile_model(out, runtime.model_dump(mode="json"), precision, name=out.name)
        facts = ran_with(compiled)
        ran = facts.get("INFERENCE_PRECISION_HINT", precision)
        if ran != precision:
            warnings.append(f"OpenVINO on this build host runs precision {ran} when {precision} was "
                            "asked (the CPU lacks it); the device may differ")
        artifact = Artifact(out, self.name, model.inputs, model.outputs, (out_dir / WEIGHTS_NAME,))
        return artifact, warnings, facts

    def runner(self, artifact: Artifact, runtime: OpenVinoRuntimeSettings, precision: str = "f32") -> Runner:
        return artifact_runner(self.name, artifact, runtime, precision)

    def candidate_runner(self, artifact: Artifact, runtime: OpenVinoRuntimeSettings,
                         precision: str = "f32") -> Runner:
        """A QDQ ONNX candidate runs as the IR lowering will make of it (convert_model, beside the
        candidate); any other ONNX is compiled directly, with the kernels its IR would get.

        OpenVINO's two ONNX readers disagree on int8: on nudenet's YOLOv8n (NNCF's QDQ) the core
        reader's model scored output cosine 0.984 against float, convert_model's 0.9997, and
        lowering then refused the better IR as unlike the model the quantize stage had judged."""
        ir = artifact.path.with_name(f"{artifact.path.stem}.candidate.xml")
        if artifact.format == "onnx" and (ir.is_file() or _has_qdq(artifact.path)):
            if not ir.is_file():  # converted once per candidate, however often it is scored
                ov = _ov("scoring int8 candidates on OpenVINO")
                try:
                    ov.save_model(ov.convert_model(str(artifact.path)), str(ir), compress_to_fp16=False)
                except Exception as exc:
                    raise BackendError(f"OpenVINO could not convert {artifact.path.name}: "
                                       f"{conversion_failure(exc)}") from None
            artifact = Artifact(ir, self.name, artifact.inputs, artifact.outputs, (ir.with_suffix(".bin"),))
        return self.runner(artifact, runtime, precision)

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
