"""One runner class per backend, and the two ways to get one: from settings (the host's build,
which has no manifest yet) or from a bundle's manifest (run.py, `edgepipe profile`).

Both end in `make_runner`, so a bundle is run with the same class and the same settings
dict (the target's `[runtime]` table, as the manifest records it) wherever it runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bundle import inside
from ..errors import BackendError, BadInputError
from ..keys import is_encrypted, model_bytes
from .base import Runner, Spec, summarize_layers
from .onnxruntime import OnnxRuntimeRunner
from .openvino import IrBytes, OpenVinoRunner
from .tensorrt import TensorRtRunner
from .tflite import TfliteRunner

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "tflite")

__all__ = ["BACKENDS", "OnnxRuntimeRunner", "OpenVinoRunner", "Runner", "TensorRtRunner", "TfliteRunner",
           "make_runner", "open_runner", "summarize_layers"]


def make_runner(backend: str, model: Path | bytes | IrBytes, *, inputs: Sequence[Spec],
                outputs: Sequence[Spec], settings: Mapping[str, Any], precision: str = "f32",
                threads: int | None = None, name: str | None = None,
                plan: Mapping[str, Any] | None = None, bundle: Path | None = None) -> Runner:
    """A runner for a model file (or its bytes) with a target's `[runtime]` settings."""
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(model, inputs, settings, threads=threads, name=name)
    if backend == "openvino":
        return OpenVinoRunner(model, inputs, settings, precision, threads=threads, name=name, outputs=outputs)
    if backend == "tflite":
        return TfliteRunner(model, inputs, outputs, settings, threads=threads, name=name)
    if backend == "tensorrt":
        if plan is None or not isinstance(model, Path):
            raise BackendError("a TensorRT engine runs from its bundle folder and engine plan")
        return TensorRtRunner(bundle or model.parent, plan, inputs, threads=threads)
    raise BackendError(f"this runtime cannot run backend '{backend}' (known: {', '.join(BACKENDS)})")


def open_runner(bundle: Path, manifest: Mapping[str, Any], *, threads: int | None = None,
                key: bytes | None = None) -> Runner:
    """The bundle's artifact with the settings its manifest records; encrypted files are
    decrypted into memory, never to disk."""
    backend = manifest["backend"]
    name = backend["name"]
    artifact = inside(bundle, backend["artifact"])
    common = {"inputs": manifest["inputs"], "outputs": manifest["outputs"], "settings": backend["runtime"],
              "precision": backend.get("precision", "f32"), "threads": threads, "name": artifact.name}
    if name == "tensorrt":
        plan = backend.get("engine")
        if not isinstance(plan, dict):
            raise BadInputError("manifest.json: a tensorrt bundle without backend.engine")
        if is_encrypted(manifest, plan["engine"]):
            raise BadInputError("an encrypted engine cannot be loaded from memory: rebuild it on the device "
                                "with --build-engine (the engine stays on the device)")
        return make_runner(name, inside(bundle, plan["engine"]), plan=plan, bundle=bundle, **common)
    model: Path | bytes | IrBytes = artifact
    plain = model_bytes(bundle, manifest, artifact.name, key)
    if plain is not None and name == "openvino":
        model = (plain, model_bytes(bundle, manifest, artifact.with_suffix(".bin").name, key) or b"")
    elif plain is not None:
        model = plain
    elif not artifact.is_file():
        raise BadInputError(f"{artifact.name}: missing from the bundle")
    runner = make_runner(name, model, **common)
    built_with = backend.get("versions", {}).get("onnxruntime")
    if name == "onnxruntime" and built_with:
        from .onnxruntime import import_ort

        running = import_ort().__version__
        if built_with.split(".")[:2] != running.split(".")[:2]:
            # The artifact is ONNX Runtime's own optimized graph, tied to the version that wrote it.
            runner.warnings.append(f"bundle optimized with onnxruntime {built_with}, running {running}: "
                                   "rebuild for the device's version if it fails")
    return runner
