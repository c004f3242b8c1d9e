"""LiteRT (TFLite): the interpreter with the target's threads, XNNPACK choice and delegate, and
the model's own I/O (channel-last layout, integer I/O with scale and zero point) applied
around it, so callers feed tensors as the manifest describes them.

Devices carry whichever LiteRT build their image has: the current package, the old
standalone runtime, or full TensorFlow; all three are tried.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import BackendError, BadInputError, first_line
from .base import Feed, Runner, Spec

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
# Shared libraries of the delegates a target may name; load_delegate() finds them on the
# device's library path.
DELEGATES = {"gpu": "libtensorflowlite_gpu_delegate.so", "nnapi": "libnnapi_delegate.so",
             "edgetpu": "libedgetpu.so.1", "hexagon": "libhexagon_delegate.so"}


def tflite_runtime() -> tuple[Any, str, str]:
    """(module with Interpreter and load_delegate, its name, its version)."""
    for name in RUNTIMES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "tensorflow.lite":  # the same names, one level down
            module = SimpleNamespace(Interpreter=module.Interpreter,
                                     load_delegate=module.experimental.load_delegate,
                                     OpResolverType=module.experimental.OpResolverType)
            return module, "tensorflow.lite", importlib.import_module("tensorflow").__version__
        package = name.split(".")[0]
        try:
            from importlib.metadata import version as dist_version
            version = dist_version(package.replace("_", "-"))
        except Exception:
            version = "unknown"
        return module, package, version
    raise BackendError("this model needs a LiteRT interpreter: pip install ai-edge-litert "
                       "(or tflite-runtime, or tensorflow)")


def interpreter(model: bytes, threads: int, xnnpack: bool, delegate: str,
                keep_all_tensors: bool = False) -> tuple[Any, str, str]:
    """A LiteRT interpreter with the target's threads, XNNPACK choice and delegate;
    `keep_all_tensors` keeps every intermediate readable after invoke (edgepipe diff)."""
    module, runtime, version = tflite_runtime()
    options: dict[str, Any] = {"model_content": model, "num_threads": threads or None}
    if keep_all_tensors:
        options["experimental_preserve_all_tensors"] = True
    if delegate != "none":
        library = DELEGATES.get(delegate, delegate)
        try:
            # Opened with ctypes first: a failed load_delegate() leaves a half-built Delegate
            # whose destructor prints a traceback (ai-edge-litert 2.3).
            import ctypes
            ctypes.CDLL(library)
            options["experimental_delegates"] = [module.load_delegate(library)]
        except (OSError, ValueError, RuntimeError) as exc:
            raise BackendError(f"the target asks for the LiteRT {delegate} delegate, which is not available "
                               f"here: cannot load {library} ({first_line(exc)})") from None
    if not xnnpack:
        resolver = getattr(module, "OpResolverType", None)
        if resolver is None:
            raise BackendError(f"{runtime} {version} cannot switch XNNPACK off")
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        built = module.Interpreter(**options)
        built.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"{runtime} could not load the model: {first_line(exc)}") from None
    return built, runtime, version


def _quantization(details: Mapping[str, Any]) -> list[float] | None:
    scale, zero = details["quantization"]
    return [float(scale), int(zero)] if scale else None


def signature_names(interpreter: Any, kind: str) -> dict[int, str]:
    """Tensor index -> the name the model's signature gives it ("inputs" or "outputs"). onnx2tf's
    SavedModel route keeps the ONNX names there while the tensors themselves are called
    `PartitionedCall:k`, in an order of their own; none where the model has no signature."""
    try:
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details() if kind == "inputs" else runner.get_output_details()
    except (ValueError, KeyError, AttributeError, RuntimeError):
        return {}
    return {int(entry["index"]): name for name, entry in details.items()}


def match_tensors(details: list[dict], specs: Sequence[Spec], aliases: Mapping[int, str] | None = None
                  ) -> list[dict]:
    """Model tensors in the order of `specs`: by name where the converter kept it (on the tensor or
    in the signature, `aliases`), else by position."""
    by_name: dict[str, dict] = {}
    for entry in details:
        bare = entry["name"].removeprefix("serving_default_").split(":")[0]
        by_name.setdefault(bare, entry)
        if aliases and entry["index"] in aliases:
            by_name.setdefault(aliases[entry["index"]], entry)
    if all(spec["name"] in by_name for spec in specs):
        return [by_name[spec["name"]] for spec in specs]
    if len(details) != len(specs):
        raise BackendError(f"the .tflite has {len(details)} tensors where the model has {len(specs)}")
    return list(details)


def describe_io(built, inputs: Sequence[Spec], outputs: Sequence[Spec]) -> dict[str, list[dict]]:
    """How the model's own I/O relates to the manifest's inputs and outputs (recorded in the
    manifest as `backend.tflite.io`)."""
    def entry(spec: Spec, details: Mapping[str, Any]) -> dict[str, Any]:
        shape = list(spec["shape"])
        model_shape = [int(d) for d in details["shape"]]
        channel_last = (len(model_shape) >= 3 and shape != model_shape
                        and [shape[0], *shape[2:], shape[1]] == model_shape)
        layout = spec.get("layout")
        return {"name": spec["name"], "tensor": details["name"], "shape": shape,
                "model_shape": model_shape, "model_dtype": np.dtype(details["dtype"]).name,
                "layout": ("NHWC" if channel_last else layout) if len(model_shape) == 4 else layout,
                "quantization": _quantization(details)}

    matched_inputs = match_tensors(built.get_input_details(), inputs, signature_names(built, "inputs"))
    matched_outputs = match_tensors(built.get_output_details(), outputs, signature_names(built, "outputs"))
    return {"inputs": [entry(s, d) for s, d in zip(inputs, matched_inputs, strict=True)],
            "outputs": [entry(s, d) for s, d in zip(outputs, matched_outputs, strict=True)]}


def to_model_layout(array: np.ndarray, shape: list[int]) -> np.ndarray:
    """A feed in the source layout (N, C, ...) or already in the model's (N, ..., C)."""
    if list(array.shape) == list(shape):
        return array
    perm = (0, *range(2, array.ndim), 1)
    if array.ndim >= 3 and [array.shape[i] for i in perm] == list(shape):
        return np.ascontiguousarray(array.transpose(perm))
    raise BadInputError(f"input of shape {list(array.shape)}; the model takes {list(shape)}")


def to_source_layout(array: np.ndarray, shape: list[Any]) -> np.ndarray:
    """An output back in the manifest's layout when the converter made it channel-last."""
    if list(array.shape) == list(shape) or array.ndim < 3:
        return array
    perm = (0, array.ndim - 1, *range(1, array.ndim - 1))
    transposed = array.transpose(perm)
    return np.ascontiguousarray(transposed) if list(transposed.shape) == list(shape) else array


def quantize_to(array: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    """Float feed → an int8/uint8 model input, with the input's own scale and zero point."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f" or array.dtype == dtype:
        return array.astype(dtype, copy=False)
    scale, zero = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, details: Mapping[str, Any]) -> np.ndarray:
    scale, zero = details["quantization"]
    if array.dtype.kind == "f" or not scale:
        return array
    return ((array.astype(np.float32) - zero) * scale).astype(np.float32)


class TfliteRunner(Runner):
    """Feeds in the manifest's layout (or already channel-last) and as float; the model's own
    layout and integer I/O are applied here, so device code can hand either a tensor as
    exported or a camera frame."""

    backend = "tflite"

    def __init__(self, model: Path | bytes, inputs: Sequence[Spec], outputs: Sequence[Spec],
                 settings: Mapping[str, Any], *, threads: int | None = None, name: str | None = None) -> None:
        super().__init__(inputs, name or (model.name if isinstance(model, Path) else "model.tflite"))
        self.model, self.outputs, self.settings, self.threads = model, list(outputs), dict(settings), threads
        self.io: dict[str, list[dict]] = {}

    def _activate(self) -> None:
        content = self.model.read_bytes() if isinstance(self.model, Path) else self.model
        count = self.settings["threads"] if self.threads is None else self.threads
        self._interpreter, runtime, version = interpreter(content, count, self.settings["xnnpack"],
                                                          self.settings["delegate"])
        outputs = self.outputs or [{"name": d["name"], "shape": [int(x) for x in d["shape"]],
                                    "dtype": "float32"} for d in self._interpreter.get_output_details()]
        self.io = describe_io(self._interpreter, self.inputs, outputs)
        built = self._interpreter
        self._inputs = list(zip(self.io["inputs"], match_tensors(
            built.get_input_details(), self.inputs, signature_names(built, "inputs")), strict=True))
        self._outputs = list(zip(self.io["outputs"], match_tensors(
            built.get_output_details(), outputs, signature_names(built, "outputs")), strict=True))
        self.runtime = {"name": runtime, "version": version, "threads": count,
                        "xnnpack": self.settings["xnnpack"], "delegate": self.settings["delegate"]}

    def _deactivate(self) -> None:
        self._interpreter = None

    def accepted_shapes(self, spec: Spec) -> list[list[Any]]:
        own = next((entry["model_shape"] for entry in self.io.get("inputs", [])
                    if entry["name"] == spec["name"]), None)
        return [list(spec["shape"]), *([own] if own else [])]

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        try:
            for entry, details in self._inputs:
                array = to_model_layout(np.asarray(feed[entry["name"]]), list(details["shape"]))
                self._interpreter.set_tensor(details["index"], quantize_to(array, details))
            self._interpreter.invoke()
            return {entry["name"]: to_source_layout(
                dequantize(self._interpreter.get_tensor(details["index"]), details), entry["shape"])
                for entry, details in self._outputs}
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"LiteRT failed running {self.name}: {first_line(exc)}") from None

    def layer_times(self, feed: Feed, runs: int) -> dict[str, Any]:
        raise BackendError("LiteRT's Python interpreter has no per-op profiler; on the device use LiteRT's "
                           "benchmark_model --enable_op_profiling=true --graph=model.tflite")
