"""The one interface every backend implements: lower an ONNX model, and run the result.

Shaped after Polygraphy's runners: the public `Runner.infer` validates the feed
against the model's inputs once, then calls the backend's `_infer`; activation is
a context manager. A backend only writes the part that differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel

from edgepipe.artifact import Artifact, TensorSpec
from edgepipe.errors import BadInputError


class Runner(ABC):
    """Runs one model with one backend; use as a context manager."""

    def __init__(self, inputs: tuple[TensorSpec, ...]) -> None:
        self.inputs = inputs
        self._active = False

    def __enter__(self) -> Runner:
        self._activate()
        self._active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._active = False
        self._deactivate()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise RuntimeError("Runner.infer called outside its `with` block")
        self._check_feed(feed)
        return self._infer(feed)

    def _check_feed(self, feed: Mapping[str, np.ndarray]) -> None:
        expected = {spec.name: spec for spec in self.inputs}
        if set(feed) != set(expected):
            raise BadInputError(
                f"inputs {sorted(feed)} given, model expects {sorted(expected)}"
            )
        for name, array in feed.items():
            spec = expected[name]
            if array.dtype.name != spec.dtype:
                raise BadInputError(f"input '{name}': dtype {array.dtype.name}, expected {spec.dtype}")
            if spec.is_static and tuple(array.shape) != tuple(spec.shape):
                raise BadInputError(
                    f"input '{name}': shape {list(array.shape)}, expected {list(spec.shape)}"
                )

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


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
    LowerSettings: ClassVar[type[BaseModel]]  # the target's [lower] table
    RuntimeSettings: ClassVar[type[BaseModel]]  # the target's [runtime] table

    def lower(self, model: Artifact, lower: Any, runtime: Any, out_dir: Path,
              precision: str = "f32", hints: LowerHints | None = None,
              ) -> tuple[Artifact, list[str], dict[str, Any]]:
        """Write the backend artifact for `model` into `out_dir`; return it, warnings, and
        what the runtime reports it actually does with it (precision, devices)."""
        ...

    def runner(self, artifact: Artifact, runtime: Any, precision: str = "f32") -> Runner:
        """A runner for an artifact this backend produced, with the target's runtime settings."""
        ...

    def onnx_runner(self, model: Path, inputs: tuple[TensorSpec, ...], runtime: Any,
                    precision: str = "f32") -> Runner:
        """Run an ONNX model (e.g. a QDQ candidate) with the kernels this backend would use
        after lowering, so int8 accuracy is scored on what the device will run."""
        ...

    def host_precisions(self, runtime: Any) -> tuple[str, ...]:
        """The float precisions this build host can run natively (for `--profile auto`)."""
        ...

    def runtime_versions(self) -> dict[str, str]:
        """Versions of the runtime libraries, for the manifest."""
        ...
