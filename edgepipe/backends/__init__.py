"""Backend registry: name -> "module:Class". Modules import their runtimes lazily."""

from __future__ import annotations

import importlib

from edgepipe.backends.base import Backend, Runner

_REGISTRY: dict[str, str] = {
    "onnxruntime": "edgepipe.backends.onnxruntime:OnnxRuntimeBackend",
    "openvino": "edgepipe.backends.openvino:OpenVinoBackend",
    "tensorrt": "edgepipe.backends.tensorrt:TensorRtBackend",
    "tflite": "edgepipe.backends.tflite:TfliteBackend",
}

__all__ = ["Backend", "Runner", "backend_names", "get_backend"]


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    module_name, _, class_name = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
