"""ONNX Runtime: offline graph optimization at build time, sessions at run time.

The lowered artifact is the ONNX model as ORT itself rewrote it (fused Conv+act,
folded constants, contrib ops), saved with `optimized_model_filepath`, so the
device skips that work at load time. It is tied to the ORT version that wrote it,
which the manifest records.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.backends.base import LowerHints, Runner
from edgepipe.errors import BackendError, BadInputError, first_line
from edgepipe.settings import StrictModel

OptimizationLevel = Literal["disabled", "basic", "extended", "all"]
ARTIFACT_NAME = "model.ort.onnx"

_UNSUPPORTED_OP = re.compile(
    r"Could not find an implementation for (?P<op>[\w.]+)\((?P<ver>-?\d+)\) node with name '(?P<node>[^']*)'"
    r"|(?P<op2>[\w.:]+)\((?P<ver2>-?\d+)\) is not a registered function/op"
)


class OnnxRuntimeLowerSettings(StrictModel):
    offline_optimization: OptimizationLevel = "extended"


class OnnxRuntimeRuntimeSettings(StrictModel):
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = one per physical core")
    inter_op_threads: int = Field(1, ge=0)
    graph_optimization_level: OptimizationLevel = "all"
    execution_mode: Literal["sequential", "parallel"] = "sequential"


def _ort():
    import onnxruntime

    return onnxruntime


def _level(ort, level: OptimizationLevel):
    return {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]


def session_options(runtime: OnnxRuntimeRuntimeSettings, level: OptimizationLevel | None = None):
    ort = _ort()
    options = ort.SessionOptions()
    options.graph_optimization_level = _level(ort, level or runtime.graph_optimization_level)
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = runtime.inter_op_threads
    options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if runtime.execution_mode == "sequential"
                              else ort.ExecutionMode.ORT_PARALLEL)
    options.log_severity_level = 3  # errors only; warnings reach the user through our reports
    return options


def available_providers(requested: list[str]) -> list[str]:
    available = set(_ort().get_available_providers())
    return [p for p in requested if p in available]


def open_session(model: Path | bytes, options, providers: list[str], name: str | None = None):
    """Create a session (from a file or serialized bytes), ORT's failures as one line."""
    ort = _ort()
    name = name or (model.name if isinstance(model, Path) else "model")
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=providers)
    except Exception as exc:
        text = str(exc)
        match = _UNSUPPORTED_OP.search(text)
        if match:
            op = match["op"] or match["op2"]
            version = match["ver"] or match["ver2"]
            node = f" (node '{match['node']}')" if match["node"] else ""
            raise BadInputError(
                f"{name}: op {op} (opset {version}){node} is not supported by "
                f"onnxruntime {ort.__version__} with {', '.join(providers)}"
            ) from None
        raise BackendError(f"onnxruntime could not load {name}: {first_line(exc)}") from None


class OnnxRuntimeRunner(Runner):
    def __init__(self, model: Path | bytes, inputs: tuple[TensorSpec, ...],
                 runtime: OnnxRuntimeRuntimeSettings, level: OptimizationLevel | None = None,
                 name: str | None = None) -> None:
        super().__init__(inputs)
        self.model = model
        self.name = name or (model.name if isinstance(model, Path) else "model")
        self.runtime = runtime
        self.level = level
        self._session = None

    def _activate(self) -> None:
        providers = available_providers(self.runtime.providers) or ["CPUExecutionProvider"]
        self._session = open_session(self.model, session_options(self.runtime, self.level),
                                     providers, self.name)

    def _deactivate(self) -> None:
        self._session = None

    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        try:
            values = self._session.run(names, dict(feed))
        except Exception as exc:
            raise BackendError(f"onnxruntime failed running {self.name}: "
                               f"{first_line(exc)}") from None
        return dict(zip(names, values, strict=True))


class OnnxRuntimeBackend:
    name = "onnxruntime"
    extra = None
    runtime_module = "onnxruntime"
    precisions = ("f32",)  # int8 comes from the quantize stage
    LowerSettings = OnnxRuntimeLowerSettings
    RuntimeSettings = OnnxRuntimeRuntimeSettings

    def lower(self, model: Artifact, lower: OnnxRuntimeLowerSettings, runtime: OnnxRuntimeRuntimeSettings,
              out_dir: Path, precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, str]]:
        warnings: list[str] = []
        level = lower.offline_optimization
        providers = available_providers(runtime.providers)
        if providers != runtime.providers and level in ("extended", "all"):
            # Extended rewrites insert provider-specific fused ops; without the target's
            # providers here, only the provider-independent basic rewrites are safe.
            missing = sorted(set(runtime.providers) - set(providers))
            warnings.append(f"{', '.join(missing)} not available on the build host: offline "
                            "optimization limited to 'basic'; the device optimizes the rest at load")
            level = "basic"
            providers = ["CPUExecutionProvider"]
        if level == "all":
            warnings.append("offline optimization 'all' writes layouts specific to this build "
                            "host's CPU; the model may run slower or fail on other CPUs")
        out = out_dir / ARTIFACT_NAME
        options = session_options(runtime, level)
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
            open_session(model.path, options, providers)
        except BackendError:
            # ORT reports a failed write of the optimized model as a protobuf error.
            needed = sum(p.stat().st_size for p in (model.path, *model.companion_files))
            free = shutil.disk_usage(out_dir).free
            if free < needed:
                raise BadInputError(f"no space left in {out_dir.parent.parent} for the optimized "
                                    f"model ({needed / 2**20:.1f} MiB needed, "
                                    f"{free / 2**20:.1f} MiB free)") from None
            raise
        facts = {"providers": ",".join(providers or ["CPUExecutionProvider"]), "offline_optimization": level}
        return Artifact(out, self.name, model.inputs, model.outputs, companions), warnings, facts

    def runner(self, artifact: Artifact, runtime: OnnxRuntimeRuntimeSettings,
               precision: str = "f32") -> Runner:
        return OnnxRuntimeRunner(artifact.path, artifact.inputs, runtime)

    def onnx_runner(self, model: Path, inputs: tuple[TensorSpec, ...], runtime: OnnxRuntimeRuntimeSettings,
                    precision: str = "f32") -> Runner:
        """An ONNX model as the lowered artifact would run: all optimizations, int8 kernels."""
        return OnnxRuntimeRunner(model, inputs, runtime, level="all")

    def host_precisions(self, runtime: OnnxRuntimeRuntimeSettings) -> tuple[str, ...]:
        return ("f32",)

    def runtime_versions(self) -> dict[str, str]:
        return {"onnxruntime": _ort().__version__}
