"""Lazy imports of the optional heavy libraries, each tied to the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from edgepipe.errors import MissingExtraError

# module name -> the extra that provides it
EXTRA_OF_MODULE: dict[str, str] = {
    "torch": "torch",
    "torch_pruning": "torch",
    "openvino": "openvino",
    "nncf": "openvino",
    "tensorrt": "tensorrt",
    "sklearn": "examples",
    "skimage": "examples",
    "pycocotools": "detect",
    "matplotlib": "report",
    "ray": "matrix",
    "ai_edge_litert": "tflite",
    "litert_torch": "tflite",
    "onnx2tf": "tflite",
    "tensorflow": "tflite",
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise an error that names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            # The module exists but one of *its* dependencies is broken: say so.
            raise MissingExtraError(exc.name, EXTRA_OF_MODULE.get(top, top), purpose) from exc
        raise MissingExtraError(module, EXTRA_OF_MODULE.get(top, top), purpose) from exc
