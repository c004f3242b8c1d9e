"""The one interface every backend implements: lower an ONNX model, and run the result.

Running is the device runtime's job (`edgepipe.runtime.runners`): a backend's `runner`
hands the artifact and the target's `[runtime]` settings to the same runner class the
bundle's run.py uses, so parity, `--profile auto` and the device agree. A backend
module itself only lowers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.runtime.runners import Runner, make_runner

__all__ = ["Backend", "LowerHints", "Runner", "artifact_runner", "specs_of"]


def specs_of(tensors: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
    """TensorSpecs as the runtime (and the manifest) describe tensors."""
    return [spec.to_json() for spec in tensors]


def artifact_runner(backend: str, artifact: Artifact, runtime: BaseModel, precision: str = "f32",
                    **settings: Any) -> Runner:
    """The runtime's runner for an artifact, with the target's `[runtime]` table as the manifest
    records it (`settings` overrides single entries where the host must differ)."""
    return make_runner(backend, artifact.path, inputs=specs_of(artifact.inputs),
                       outputs=specs_of(artifact.outputs),
                       settings={**runtime.model_dump(mode="json"), **settings}, precision=precision,
                       name=artifact.path.name)


@dataclass(frozen=True)
class LowerHints:
    """What the build knows beyond the model file, for backends that need it: TensorRT's
    optimization-profile ranges (`--input NAME:MIN/OPT/MAX`); for TFLite's litert-torch
    route the source module itself, sample arguments, and which stages ran before."""

    shape_ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=dict)
    model_name: str = "model"
    source_kind: str = "onnx"
    source_module: Any = None  # the nn.Module of a torch source, else None
    example_args: tuple[Any, ...] = ()  # torch tensors in input order, for converters that trace
    stages: tuple[str, ...] = ()
    work_dir: Path = Path(".")  # scratch space outside the bundle


class Backend(Protocol):
    """A deployment runtime. Adding one is one module plus one registry entry."""

    name: ClassVar[str]
    extra: ClassVar[str | None]  # the pip extra that installs its runtime; None if core
    runtime_module: ClassVar[str]  # imported to check the runtime is installed
    precisions: ClassVar[tuple[str, ...]]  # what the profile's [lower] precision may ask for
    # Whether its artifact keeps --input MIN/OPT/MAX ranges dynamic; if not, a range is refused.
    shape_ranges: ClassVar[bool]
    LowerSettings: ClassVar[type[BaseModel]]  # the target's [lower] table
    RuntimeSettings: ClassVar[type[BaseModel]]  # the target's [runtime] table

    def lower(self, model: Artifact, lower: Any, runtime: Any, out_dir: Path,
              precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, Any]]:
        """Write the backend artifact for `model` into `out_dir`; return it, warnings, and
        what the runtime reports it actually does with it (precision, devices)."""
        ...

    def runner(self, artifact: Artifact, runtime: Any, precision: str = "f32") -> Runner:
        """A runner for an artifact this backend produced, with the target's runtime settings:
        the runtime's own class, as the bundle's run.py creates it."""
        ...

    def candidate_runner(self, artifact: Artifact, runtime: Any, precision: str = "f32") -> Runner:
        """Run a stage's candidate (a QDQ ONNX, an int8 IR or .tflite from the quantize stage)
        with the kernels this backend would use after lowering, so int8 accuracy is scored on
        what the device will run."""
        ...

    def host_precisions(self, runtime: Any) -> tuple[str, ...]:
        """The float precisions this build host can run natively (for `--profile auto`)."""
        ...

    def runtime_versions(self) -> dict[str, str]:
        """Versions of the runtime libraries, for the manifest."""
        ...
