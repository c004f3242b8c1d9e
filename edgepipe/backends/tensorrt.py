"""TensorRT: an engine plan for the device, and the engine itself where this host can build it.

An engine is specific to the GPU and the TensorRT line that built it, so the bundle always
carries what the device needs to build its own: the ONNX it is built from, `calib.cache`
for TensorRT 8.x int8, `build_engine.sh` (trtexec) and the runtime's TensorRT module (the
Python API, behind `run.py --build-engine`), all driven by one plan stored in the manifest. When
this host has TensorRT and the target's GPU, the engine is built here and checked too.

Precision per TensorRT line (see `trt/versions.py` for the sources):
- 8.x int8: the QDQ model stripped back to float + `--int8 --calib=calib.cache` (implicit
  quantization, JetPack 5's mature path), fp16 allowed for layers without a scale;
- 10.x int8: the symmetric QDQ model as a strongly typed network; fp16: `--fp16`;
- 11.x: no precision flags exist; int8 from QDQ, fp16 from an fp16 ONNX written here.

Without TensorRT here, stage parity is measured by running the ONNX the engine is built
from in ONNX Runtime (CUDA provider where present, else CPU) and the report says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from edgepipe.artifact import Artifact
from edgepipe.backends.base import LowerHints, Runner, specs_of
from edgepipe.errors import BackendError, BadInputError
from edgepipe.runtime.runners import make_runner
from edgepipe.runtime.runners import tensorrt as engine_module
from edgepipe.settings import StrictModel
from edgepipe.trt.plan import EnginePlan, ShapeRange
from edgepipe.trt.versions import TensorRtVersion

ENGINE_SOURCE = "model.onnx"
FLOAT_SOURCE = "model.float.onnx"  # TensorRT 8.x int8: QDQ stripped, scales in calib.cache
FP16_SOURCE = "model.fp16.onnx"  # TensorRT 11.x fp16: types come from the ONNX
CALIBRATION_CACHE = "calib.cache"
BUILD_SCRIPT = "build_engine.sh"
_PRECISION = {"f32": "fp32", "f16": "fp16"}


class TensorRtLowerSettings(StrictModel):
    """What the device is: its TensorRT line and GPU, and how to build for it."""

    tensorrt_version: str = Field(..., pattern=r"^\d+\.\d+(\.\d+){0,2}$",
                                  description="the TensorRT on the device (JetPack 6: 10.3; JetPack 5: 8.5)")
    compute_capability: str | None = Field(None, pattern=r"^\d+\.\d+$",
                                           description="the device GPU's; unset = whichever GPU builds it")
    dla_cores: int = Field(0, ge=0, description="DLA cores the module has (AGX Orin: 2)")
    dla_core: int = Field(-1, ge=-1, description="build for this DLA core; -1 = GPU only")
    gpu_fallback: bool = Field(True, description="layers DLA cannot run go to the GPU")
    workspace_mib: int = Field(1024, ge=16, description="builder workspace memory pool")
    builder_optimization_level: int | None = Field(None, ge=0, le=5)
    build_on_host: bool = Field(True, description="build the engine here when this host has TensorRT "
                                                  "and the target's GPU")

    @model_validator(mode="after")
    def _dla_core_exists(self) -> TensorRtLowerSettings:
        if self.dla_core >= 0 and self.dla_core >= self.dla_cores:
            raise ValueError(f"dla_core {self.dla_core} asked, the device has {self.dla_cores} DLA cores")
        TensorRtVersion.parse(self.tensorrt_version).rules  # noqa: B018 - refuses unknown lines early
        return self


class TensorRtRuntimeSettings(StrictModel):
    parity_providers: list[str] = Field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        description="ONNX Runtime providers that check the engine's ONNX where TensorRT is absent")


def _is_qdq(path: Path) -> bool:
    from edgepipe import onnx_model

    return any(n.op_type == "QuantizeLinear" for n in onnx_model.load_plain(path).graph.node)


def _write_fp16(source: Path, output: Path) -> None:
    """An fp16 ONNX with float32 I/O, for TensorRT 11.x (which has no --fp16): onnxruntime's own
    converter, the same job NVIDIA's ModelOpt AutoCast does, without a new dependency."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from edgepipe.onnx_model import save

    save(convert_float_to_float16(onnx.load(str(source)), keep_io_types=True), output)


def make_plan(model: Artifact, lower: TensorRtLowerSettings, precision: str, quantized: bool,
              shapes: dict[str, ShapeRange], sparsity: bool) -> EnginePlan:
    """What to build and how, for this model on this target's TensorRT line."""
    version = TensorRtVersion.parse(lower.tensorrt_version)
    rules = version.rules
    common = {"tensorrt_version": lower.tensorrt_version, "compute_capability": lower.compute_capability,
              "workspace_mib": lower.workspace_mib,
              "dla_core": None if lower.dla_core < 0 else lower.dla_core,
              "gpu_fallback": lower.gpu_fallback, "sparsity": sparsity, "shapes": shapes,
              "builder_optimization_level": lower.builder_optimization_level}
    if quantized and version.int8_from_calibration_cache:
        return EnginePlan(FLOAT_SOURCE, precision="int8", int8_mode="calibration-cache", fp16_flag=True,
                          calibration_cache=CALIBRATION_CACHE, **common)
    if quantized:
        return EnginePlan(ENGINE_SOURCE, precision="int8", int8_mode="strongly-typed", strongly_typed=True,
                          **common)
    if precision == "fp16" and not rules.precision_flags:
        return EnginePlan(FP16_SOURCE, precision="fp16", strongly_typed=True, **common)
    return EnginePlan(ENGINE_SOURCE, precision=precision, fp16_flag=precision == "fp16", **common)


class TensorRtBackend:
    name = "tensorrt"
    extra = "tensorrt"
    # What the *build host* needs: ONNX Runtime checks the engine's ONNX; TensorRT is needed
    # only where the engine is built (the device, or a host with the target's GPU).
    runtime_module = "onnxruntime"
    shape_ranges = True
    precisions = ("f32", "f16")  # int8 comes from the quantize stage as symmetric QDQ
    LowerSettings = TensorRtLowerSettings
    RuntimeSettings = TensorRtRuntimeSettings

    def lower(self, model: Artifact, lower: TensorRtLowerSettings, runtime: TensorRtRuntimeSettings,
              out_dir: Path, precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, Any]]:
        from edgepipe.onnx_model import load_plain, save
        from edgepipe.pruning.unstructured import two_of_four_layers
        from edgepipe.quantization import tensorrt_cache
        from edgepipe.quantization.strip_qdq import strip_qdq
        from edgepipe.trt import build_script
        from edgepipe.trt.precheck import run_prechecks

        hints = hints or LowerHints()
        warnings: list[str] = []
        out_dir.mkdir(parents=True, exist_ok=True)
        quantized = _is_qdq(model.path)
        # Only axes given a MIN/OPT/MAX range stay dynamic (export fixes the rest): they get a profile.
        shapes = {name: ShapeRange(*r) for name, r in hints.shape_ranges.items() if r[0] != r[2]}
        sparse_layers = two_of_four_layers(model.path)
        plan = make_plan(model, lower, _PRECISION[precision], quantized, shapes, sparse_layers > 0)
        prechecks = run_prechecks(model.path, plan)
        source = out_dir / ENGINE_SOURCE
        if model.companion_files:
            save(load_plain(model.path), source)
        else:
            shutil.copyfile(model.path, source)
        facts: dict[str, Any] = {"prechecks": prechecks.to_json(), "two_of_four_layers": sparse_layers}
        if plan.onnx == FLOAT_SOURCE:
            quantized_tensors = strip_qdq(model.path, out_dir / FLOAT_SOURCE)
            cache = out_dir / CALIBRATION_CACHE
            if not cache.is_file():
                raise BadInputError("TensorRT 8.x int8 needs calib.cache: set [int8] calibration_cache = "
                                    "true in the target")
            facts["calibration_cache_tensors"] = tensorrt_cache.restrict_cache(cache, quantized_tensors)
        elif plan.onnx == FP16_SOURCE:
            _write_fp16(model.path, out_dir / FP16_SOURCE)
        script = out_dir / BUILD_SCRIPT
        script.write_text(build_script.render(plan, hints.model_name), encoding="utf-8")
        script.chmod(0o755)
        engine = self._build_here(out_dir, plan, lower, warnings)
        facts["engine"] = {**plan.to_json(), "built": engine is not None,
                           "build_command": f"bash {BUILD_SCRIPT}", "record": engine}
        if engine is None:
            artifact = Artifact(source, "tensorrt-onnx", model.inputs, model.outputs)
            warnings.append(f"no engine built here ({self._why_not_here(plan)}): the bundle builds it on "
                            f"the device with `bash {BUILD_SCRIPT}` or `python3 run.py --build-engine`; "
                            "parity was checked on the engine's ONNX with ONNX Runtime")
        else:
            artifact = Artifact(out_dir / plan.engine, self.name, model.inputs, model.outputs)
        if plan.sparsity:
            warnings.append(f"{sparse_layers} layers hold 2:4 sparse weights: the engine is built with "
                            "--sparsity=enable (sparse tensor cores on Ampere/Orin and later)")
        return artifact, warnings, facts

    @staticmethod
    def _why_not_here(plan: EnginePlan) -> str:
        module = engine_module
        local = module.local_facts()
        if local["tensorrt"] is None:
            return "TensorRT is not installed on this host"
        if local["compute_capability"] is None:
            return "this host has no CUDA GPU"
        problems = module.compatibility_problems(plan.to_json(), None, local)
        return problems[0] if problems else "build_on_host = false in the target"

    @staticmethod
    def _build_here(out_dir: Path, plan: EnginePlan, lower: TensorRtLowerSettings,
                    warnings: list[str]) -> dict[str, Any] | None:
        module = engine_module
        local = module.local_facts()
        if (not lower.build_on_host or local["tensorrt"] is None or local["compute_capability"] is None
                or module.compatibility_problems(plan.to_json(), None, local)):
            return None
        return module.build(out_dir, plan.to_json(), log=lambda line: None)

    def runner(self, artifact: Artifact, runtime: TensorRtRuntimeSettings, precision: str = "f32") -> Runner:
        if artifact.format == self.name:  # a built engine; its build record holds the plan
            record = engine_module.read_record(artifact.path.parent)
            if record is None:
                raise BackendError(f"{artifact.path.name} has no build record (model.engine.json)")
            return make_runner(self.name, artifact.path, inputs=specs_of(artifact.inputs),
                               outputs=specs_of(artifact.outputs), settings={}, plan=record["plan"])
        return self.candidate_runner(artifact, runtime, precision)

    def candidate_runner(self, artifact: Artifact, runtime: TensorRtRuntimeSettings,
                         precision: str = "f32") -> Runner:
        """No TensorRT here: ONNX Runtime runs the QDQ model exactly as ONNX defines it (dequantize,
        compute in float), which is what TensorRT's int8 kernels compute up to rounding.

        Not with ORT's own fused int8 kernels: on x86 without VNNI those saturate symmetric
        int8 (measured, trained digits CNN: 91.1 % top-1 with graph optimizations 'all',
        99.44 % as defined, the float model's 99.44 %), which says nothing about the device.
        """
        from edgepipe.backends.onnxruntime import exact_runner

        return exact_runner(artifact.path, artifact.inputs, providers=runtime.parity_providers)

    def host_precisions(self, runtime: TensorRtRuntimeSettings) -> tuple[str, ...]:
        """`--profile auto` times bundles on this host: only possible with TensorRT and a GPU here."""
        local = engine_module.local_facts()
        return ("f32", "f16") if local["tensorrt"] and local["compute_capability"] else ()

    def runtime_versions(self) -> dict[str, str]:
        tensorrt = engine_module.local_facts()["tensorrt"]
        return {"tensorrt_on_build_host": tensorrt or "not installed"}
