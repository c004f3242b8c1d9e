"""ONNX Runtime: offline graph optimization at build time; sessions come from the runtime.

The lowered artifact is the ONNX model as ORT itself rewrote it (fused Conv+act,
folded constants, contrib ops), saved with `optimized_model_filepath`, so the
device skips that work at load time. It is tied to the ORT version that wrote it,
which the manifest records.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Literal

from pydantic import Field

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.backends.base import LowerHints, Runner, artifact_runner, specs_of
from edgepipe.errors import BackendError, BadInputError
from edgepipe.runtime.runners.onnxruntime import (
    OnnxRuntimeRunner,
    import_ort,
    open_session,
    session_options,
    usable_providers,
)
from edgepipe.settings import StrictModel

OptimizationLevel = Literal["disabled", "basic", "extended", "all"]
ARTIFACT_NAME = "model.ort.onnx"


class OnnxRuntimeLowerSettings(StrictModel):
    offline_optimization: OptimizationLevel = "extended"


class OnnxRuntimeRuntimeSettings(StrictModel):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per physical core")
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization_level: OptimizationLevel = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"


def exact_runner(model: Path | bytes, inputs: tuple[TensorSpec, ...], name: str | None = None,
                 providers: list[str] | None = None) -> Runner:
    """An ONNX model run exactly as ONNX defines it (every graph optimization off): the reference
    for float intermediates and for QDQ semantics."""
    settings = OnnxRuntimeRuntimeSettings(**({"providers": providers} if providers else {}))
    return OnnxRuntimeRunner(model, specs_of(inputs), settings.model_dump(mode="json"), level="disabled",
                             name=name)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    extra = None
    runtime_module = "onnxruntime"
    shape_ranges = True
    precisions = ("f32",)  # int8 comes from the quantize stage
    LowerSettings = OnnxRuntimeLowerSettings
    RuntimeSettings = OnnxRuntimeRuntimeSettings

    def lower(self, model: Artifact, lower: OnnxRuntimeLowerSettings, runtime: OnnxRuntimeRuntimeSettings,
              out_dir: Path, precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, str]]:
        warnings: list[str] = []
        level = lower.offline_optimization
        providers, missing = usable_providers(runtime.providers)
        if missing and level in ("extended", "all"):
            # Extended rewrites insert provider-specific fused ops; without the target's
            # providers here, only the provider-independent basic rewrites are safe.
            warnings.append(f"{', '.join(sorted(missing))} not available on the build host: offline "
                            "optimization limited to 'basic'; the device optimizes the rest at load")
            level = "basic"
            providers = ["CPUExecutionProvider"]
        if level == "all":
            warnings.append("offline optimization 'all' writes layouts specific to this build "
                            "host's CPU; the model may run slower or fail on other CPUs")
        out = out_dir / ARTIFACT_NAME
        options = session_options(runtime.model_dump(mode="json"), level=level)
        options.optimized_model_filepath = str(out)
        companions: tuple[Path, ...] = ()
        if model.companion_files:
            data_name = f"{ARTIFACT_NAME}.data"
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", data_name)
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
            companions = (out_dir / data_name,)
        try:
            open_session(model.path, options, providers, model.path.name)
        except BackendError:
            # ORT reports a failed write of the optimized model as a protobuf error.
            needed = sum(p.stat().st_size for p in (model.path, *model.companion_files))
            free = shutil.disk_usage(out_dir).free
            if free < needed:
                raise BadInputError(f"no space left in {out_dir.parent.parent} for the optimized "
                                    f"model ({needed / 2**20:.1f} MiB needed, "
                                    f"{free / 2**20:.1f} MiB free)") from None
            raise
        facts = {"providers": ",".join(providers), "offline_optimization": level}
        return Artifact(out, self.name, model.inputs, model.outputs, companions), warnings, facts

    def runner(self, artifact: Artifact, runtime: OnnxRuntimeRuntimeSettings,
               precision: str = "f32") -> Runner:
        return artifact_runner(self.name, artifact, runtime, precision)

    def candidate_runner(self, artifact: Artifact, runtime: OnnxRuntimeRuntimeSettings,
                         precision: str = "f32") -> Runner:
        """A candidate as the lowered artifact would run: the target's settings, int8 kernels."""
        return self.runner(artifact, runtime, precision)

    def host_precisions(self, runtime: OnnxRuntimeRuntimeSettings) -> tuple[str, ...]:
        return ("f32",)

    def runtime_versions(self) -> dict[str, str]:
        return {"onnxruntime": import_ort().__version__}
