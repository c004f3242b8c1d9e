#!/usr/bin/env python3
"""Run or time this edgepipe bundle on the device.

Needs only numpy and the backend's runtime (e.g. `pip install numpy onnxruntime`);
it deliberately imports nothing from edgepipe, so it runs where edgepipe is not
installed. It re-implements the few checks it needs (hashes, input shapes) for
that reason.

    python run.py --verify
    python run.py --verify --pubkey release.pub   # also the Ed25519 signature (needs cryptography)
    python run.py --input sample.npz --output out.npz
    python run.py --input photo.jpg        # decoded and preprocessed as at calibration (needs Pillow)
    python run.py --benchmark --runs 100 --warmup 10 --threads 2 --json
    python3 run.py --build-engine          # TensorRT bundles: build model.engine on this device
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

SCHEMA = "edgepipe.bundle/1"
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # detached Ed25519 signature of manifest.json's exact bytes
NOT_LISTED = (MANIFEST_NAME, SIGNATURE_NAME)
PUBKEY_ENV = "EDGEPIPE_PUBKEY"  # a public key file: verify the bundle before every run
KEY_ENV = "EDGEPIPE_MODEL_KEY"  # AES-256 key for encrypted bundles: 64 hex digits, or a file of them
ENCRYPTED_SUFFIX = ".enc"  # 12-byte nonce, then AES-256-GCM ciphertext and tag; AAD: the plain name


class RunError(Exception):
    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- encrypted models


def parse_model_key(text: str, where: str) -> bytes:
    """A key is 64 hex digits (a file holding them, or the value itself)."""
    value = text.strip()
    candidate = Path(value)
    if len(value) != 64 and candidate.is_file():
        try:
            value = candidate.read_text(encoding="ascii", errors="replace").strip()
        except OSError as exc:
            raise RunError(f"{where}: cannot read the key file ({exc.strerror})") from None
    try:
        key = bytes.fromhex(value)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise RunError(f"{where}: not an AES-256 key (64 hex digits; `edgepipe keygen --kind aes256`)")
    return key


def model_key_id(key: bytes) -> str:
    return hashlib.sha256(b"edgepipe model key\0" + key).hexdigest()[:16]


def model_bytes(bundle: Path, manifest: dict, name: str, key: bytes | None) -> bytes | None:
    """The decrypted bytes of an encrypted model file, in memory only; None when it is not encrypted."""
    encryption = manifest.get("encryption")
    if not encryption or name not in encryption["files"]:
        return None
    if key is None:
        raise RunError(f"{name} is encrypted: give the key with --key-file or ${KEY_ENV}")
    if model_key_id(key) != encryption["key_id"]:
        raise RunError(f"{name} is encrypted with key {encryption['key_id']}, not with the given key "
                       f"({model_key_id(key)})")
    try:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise RunError("encrypted bundles need the cryptography package: pip install cryptography",
                       3) from None
    blob = (bundle / (name + ENCRYPTED_SUFFIX)).read_bytes()
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], name.encode())
    except InvalidTag:
        raise RunError(f"{name}{ENCRYPTED_SUFFIX}: authentication failed (tampered, or renamed from "
                       "another file)", 1) from None


# ---------------------------------------------------------------- backends


class OnnxRuntimeModel:
    """The bundle's ONNX Runtime artifact with the target's session settings."""

    def __init__(self, bundle: Path, manifest: dict, threads: int | None, key: bytes | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RunError("this bundle needs onnxruntime: pip install onnxruntime", 3) from None
        settings = manifest["backend"]["runtime"]
        options = ort.SessionOptions()
        levels = {"disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        options.graph_optimization_level = levels[settings["graph_optimization_level"]]
        options.intra_op_num_threads = settings["threads"] if threads is None else threads
        options.inter_op_num_threads = settings["inter_op_threads"]
        options.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL
                                  if settings["execution_mode"] == "sequential"
                                  else ort.ExecutionMode.ORT_PARALLEL)
        options.log_severity_level = 3
        available = set(ort.get_available_providers())
        self.providers = [p for p in settings["providers"] if p in available] or [
            "CPUExecutionProvider"]
        missing = [p for p in settings["providers"] if p not in available]
        path = bundle / manifest["backend"]["artifact"]
        # An encrypted model is decrypted into memory and handed to ORT as bytes, never written to disk.
        self._model = model_bytes(bundle, manifest, path.name, key) or str(path)
        self._ort, self._options = ort, options
        try:
            self.session = ort.InferenceSession(self._model, options, providers=self.providers)
        except Exception as exc:
            raise RunError(f"onnxruntime could not load {path.name}: "
                           f"{str(exc).strip().splitlines()[0]}", 3) from None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.runtime = {"name": "onnxruntime", "version": ort.__version__,
                        "providers": self.session.get_providers(),
                        "threads": options.intra_op_num_threads}
        built_with = manifest["backend"].get("versions", {}).get("onnxruntime")
        self.warnings = []
        if missing:
            self.warnings.append(f"{', '.join(missing)} not available in this onnxruntime: "
                                 f"running on {', '.join(self.providers)}")
        if built_with and built_with.split(".")[:2] != ort.__version__.split(".")[:2]:
            self.warnings.append(f"bundle optimized with onnxruntime {built_with}, running "
                                 f"{ort.__version__}: rebuild for the device's version if it fails")

    def infer(self, feed: dict) -> dict:
        return dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True))

    def layer_times(self, feed: dict, runs: int) -> dict:
        """Per-node kernel times from ONNX Runtime's own profiler (a separate session, so
        the timed runs above carry no profiling overhead)."""
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self._options.enable_profiling = True
            self._options.profile_file_prefix = str(Path(folder) / "ort")
            session = self._ort.InferenceSession(self._model, self._options, providers=self.providers)
            self._options.enable_profiling = False
            for _ in range(runs):
                session.run(None, feed)
            events = json.loads(Path(session.end_profiling()).read_text())
        totals: dict = {}
        for event in events:
            if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
                name = event["args"].get("node_name", event["name"].removesuffix("_kernel_time"))
                entry = totals.setdefault(name, {"type": event["args"].get("op_name", ""),
                                                 "exec_type": event["args"].get("provider", ""), "us": 0.0})
                entry["us"] += event["dur"]
        return {"source": "onnxruntime profiler (kernel time)", "runs": runs, "totals": totals}


class OpenVinoModel:
    """The bundle's OpenVINO IR, compiled with the target's settings and the profile's precision."""

    def __init__(self, bundle: Path, manifest: dict, threads: int | None, key: bytes | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise RunError("this bundle needs OpenVINO: pip install openvino", 3) from None
        settings = manifest["backend"]["runtime"]
        config = {"PERFORMANCE_HINT": settings["performance_hint"],
                  "INFERENCE_PRECISION_HINT": manifest["backend"].get("precision", "f32")}
        count = settings["threads"] if threads is None else threads
        if count:
            config["INFERENCE_NUM_THREADS"] = count
        if settings["streams"]:
            config["NUM_STREAMS"] = settings["streams"]
        if settings.get("cpu_pinning") is not None and settings["device"] == "CPU":
            config["ENABLE_CPU_PINNING"] = settings["cpu_pinning"]
        if settings.get("cache_dir"):
            config["CACHE_DIR"] = settings["cache_dir"]
        core = ov.Core()
        path = bundle / manifest["backend"]["artifact"]
        if settings["device"].split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise RunError(f"OpenVINO device {settings['device']} is not present "
                           f"(found: {', '.join(core.available_devices)})", 3)
        xml = model_bytes(bundle, manifest, path.name, key)
        if xml is None:
            self._model = str(path)
        else:  # decrypted into memory: the IR from a string, the weights from a tensor
            weights = model_bytes(bundle, manifest, path.with_suffix(".bin").name, key) or b""
            self._model = core.read_model(xml.decode("utf-8"), ov.Tensor(np.frombuffer(weights, np.uint8)))
            config.pop("CACHE_DIR", None)  # a compiled-model cache would put the weights on disk in clear
        self._core, self._device, self._config = core, settings["device"], config
        try:
            compiled = core.compile_model(self._model, settings["device"], config)
        except Exception as exc:
            raise RunError(f"OpenVINO could not compile {path.name}: "
                           f"{str(exc).strip().splitlines()[0]}", 3) from None
        self.output_names = [next(iter(o.get_names()), f"output_{i}") for i, o in enumerate(compiled.outputs)]
        self.request = compiled.create_infer_request()
        self.runtime = {"name": "openvino", "version": ov.__version__.split("-")[0],
                        "device": settings["device"],
                        "precision": compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
                        "threads": count}
        self.warnings = []

    def infer(self, feed: dict) -> dict:
        results = self.request.infer(feed)
        return {name: np.asarray(results[i]) for i, name in enumerate(self.output_names)}

    def layer_times(self, feed: dict, runs: int) -> dict:
        """OpenVINO's PERF_COUNT per executed node (a separately compiled model, so the
        timed runs carry no counting overhead)."""
        config = {**self._config, "PERF_COUNT": True}
        compiled = self._core.compile_model(self._model, self._device, config)
        request = compiled.create_infer_request()
        totals: dict = {}
        for _ in range(runs):
            request.infer(feed)
            for info in request.get_profiling_info():
                if str(info.status).endswith("NOT_RUN"):
                    continue
                entry = totals.setdefault(info.node_name, {"type": info.node_type,
                                                           "exec_type": info.exec_type, "us": 0.0})
                entry["us"] += info.real_time.total_seconds() * 1e6
        return {"source": "OpenVINO PERF_COUNT (real time)", "runs": runs, "totals": totals}


# Devices carry whichever LiteRT build their image has: the current package, the old
# standalone runtime, or full TensorFlow.
TFLITE_RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
# Shared libraries of the delegates a target may name; load_delegate() finds them on the
# device's library path.
TFLITE_DELEGATES = {"gpu": "libtensorflowlite_gpu_delegate.so", "nnapi": "libnnapi_delegate.so",
                    "edgetpu": "libedgetpu.so.1", "hexagon": "libhexagon_delegate.so"}


def tflite_runtime():
    """(module with Interpreter and load_delegate, its name, its version)."""
    import importlib
    for name in TFLITE_RUNTIMES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if name == "tensorflow.lite":  # the same names, one level down
            from types import SimpleNamespace
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
    raise RunError("this bundle needs a LiteRT interpreter: pip install ai-edge-litert "
                   "(or tflite-runtime, or tensorflow)", 3)


def tflite_interpreter(model: bytes, threads: int, xnnpack: bool, delegate: str):
    """A LiteRT interpreter with the target's threads, XNNPACK choice and delegate."""
    module, runtime, version = tflite_runtime()
    options: dict = {"model_content": model, "num_threads": threads or None}
    if delegate != "none":
        library = TFLITE_DELEGATES.get(delegate, delegate)
        try:
            # Opened with ctypes first: a failed load_delegate() leaves a half-built Delegate
            # whose destructor prints a traceback (ai-edge-litert 2.3).
            import ctypes
            ctypes.CDLL(library)
            options["experimental_delegates"] = [module.load_delegate(library)]
        except (OSError, ValueError, RuntimeError) as exc:
            raise RunError(f"the target asks for the LiteRT {delegate} delegate, which is not available "
                           f"here: cannot load {library} ({str(exc).strip().splitlines()[0]})", 3) from None
    if not xnnpack:
        resolver = getattr(module, "OpResolverType", None)
        if resolver is None:
            raise RunError(f"{runtime} {version} cannot switch XNNPACK off", 3)
        options["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = module.Interpreter(**options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise RunError(f"{runtime} could not load the model: {str(exc).strip().splitlines()[0]}", 3) from None
    return interpreter, runtime, version


def to_model_layout(array: np.ndarray, shape: list) -> np.ndarray:
    """A feed in the source layout (N, C, ...) or already in the model's (N, ..., C)."""
    if list(array.shape) == list(shape):
        return array
    perm = (0, *range(2, array.ndim), 1)
    if array.ndim >= 3 and [array.shape[i] for i in perm] == list(shape):
        return np.ascontiguousarray(array.transpose(perm))
    raise RunError(f"input of shape {list(array.shape)}; the model takes {list(shape)}")


def to_source_layout(array: np.ndarray, shape: list) -> np.ndarray:
    """An output back in the manifest's layout when the converter made it channel-last."""
    if list(array.shape) == list(shape) or array.ndim < 3:
        return array
    perm = (0, array.ndim - 1, *range(1, array.ndim - 1))
    transposed = array.transpose(perm)
    return np.ascontiguousarray(transposed) if list(transposed.shape) == list(shape) else array


def quantize_to(array: np.ndarray, details: dict) -> np.ndarray:
    """Float feed → an int8/uint8 model input, with the input's own scale and zero point."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f" or array.dtype == dtype:
        return array.astype(dtype, copy=False)
    scale, zero = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)


def dequantize(array: np.ndarray, details: dict) -> np.ndarray:
    scale, zero = details["quantization"]
    if array.dtype.kind == "f" or not scale:
        return array
    return ((array.astype(np.float32) - zero) * scale).astype(np.float32)


def tflite_invoke(interpreter, inputs: list, outputs: list, feed: dict) -> dict:
    """One inference: (io record entry, tensor details) pairs for inputs and outputs; the feed
    in the manifest's layout or the model's, float or not; outputs in the manifest's layout."""
    for entry, details in inputs:
        array = to_model_layout(np.asarray(feed[entry["name"]]), list(details["shape"]))
        interpreter.set_tensor(details["index"], quantize_to(array, details))
    interpreter.invoke()
    return {entry["name"]: to_source_layout(dequantize(interpreter.get_tensor(details["index"]), details),
                                            entry["shape"])
            for entry, details in outputs}


class TfliteModel:
    """The bundle's model.tflite in whichever LiteRT interpreter the device has.

    Feeds come in the manifest's layout (or already channel-last) and as float; the
    model's own layout and integer I/O (scale, zero point) are applied here, so device
    code can hand either a tensor as exported or a camera frame.
    """

    def __init__(self, bundle: Path, manifest: dict, threads: int | None, key: bytes | None = None) -> None:
        settings = manifest["backend"]["runtime"]
        path = bundle / manifest["backend"]["artifact"]
        content = model_bytes(bundle, manifest, path.name, key)
        if content is None:
            content = path.read_bytes()
        count = settings["threads"] if threads is None else threads
        self.interpreter, runtime, version = tflite_interpreter(content, count, settings["xnnpack"],
                                                                settings["delegate"])
        io = manifest["backend"]["tflite"]["io"]
        self.inputs = io["inputs"]
        self.outputs = io["outputs"]
        details = {d["name"]: d for d in self.interpreter.get_input_details()}
        self._input_details = [details[entry["tensor"]] for entry in self.inputs]
        details = {d["name"]: d for d in self.interpreter.get_output_details()}
        self._output_details = [details[entry["tensor"]] for entry in self.outputs]
        self.runtime = {"name": runtime, "version": version, "threads": count,
                        "xnnpack": settings["xnnpack"], "delegate": settings["delegate"]}
        self.warnings = []

    def infer(self, feed: dict) -> dict:
        return tflite_invoke(self.interpreter, list(zip(self.inputs, self._input_details, strict=True)),
                             list(zip(self.outputs, self._output_details, strict=True)), feed)

    def layer_times(self, feed: dict, runs: int) -> dict:
        raise RunError("LiteRT's Python interpreter has no per-op profiler; on the device use LiteRT's "
                       "benchmark_model --enable_op_profiling=true --graph=model.tflite", 3)


def engine_module(bundle: Path):
    """The bundle's trt_engine.py (TensorRT bundles only), loaded by path: no sys.path change."""
    import importlib.util

    path = bundle / "trt_engine.py"
    if not path.is_file():
        raise RunError(f"{path.name} is missing: this TensorRT bundle is incomplete (rebuild it)")
    sys.dont_write_bytecode = True  # a __pycache__ would be a file the manifest does not list
    spec = importlib.util.spec_from_file_location("edgepipe_bundle_trt_engine", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TensorRtModel:
    """The bundle's engine, built on this device (see build_engine.sh / --build-engine)."""

    def __init__(self, bundle: Path, manifest: dict, threads: int | None, key: bytes | None = None) -> None:
        module = engine_module(bundle)
        plan = manifest["backend"]["engine"]
        if plan["engine"] in manifest.get("encryption", {}).get("files", []):
            raise RunError("an encrypted engine cannot be loaded from memory by this run.py: rebuild it "
                           "on the device with --build-engine (the engine stays on the device)")
        try:
            self._model = module.EngineModel(bundle, plan, threads)
        except module.EngineError as exc:
            raise RunError(str(exc), exc.exit_code) from None
        self.runtime, self.warnings = self._model.runtime, self._model.warnings

    def infer(self, feed: dict) -> dict:
        return self._model.infer(feed)

    def layer_times(self, feed: dict, runs: int) -> dict:
        return self._model.layer_times(feed, runs)


def build_engine(bundle: Path, manifest: dict, key: bytes | None) -> dict:
    """--build-engine: the plan in the manifest, through the TensorRT Python API, on this device."""
    plan = manifest["backend"].get("engine")
    if not plan:
        raise RunError(f"--build-engine: this is a {manifest['backend']['name']} bundle, not a TensorRT one")
    module = engine_module(bundle)
    try:
        return module.build(bundle, plan, model_bytes(bundle, manifest, plan["onnx"], key),
                            log=lambda line: print(line, file=sys.stderr))
    except module.EngineError as exc:
        raise RunError(str(exc), exc.exit_code) from None


def engine_problems(bundle: Path, manifest: dict) -> list:
    """A TensorRT bundle's engine built for another TensorRT line or GPU than this device's."""
    plan = manifest["backend"].get("engine")
    if not plan or not (bundle / plan["engine"]).is_file():
        return []
    module = engine_module(bundle)
    return module.compatibility_problems(plan, module.read_record(bundle), module.local_facts())


def per_layer(model, feed: dict, runs: int, top: int = 25) -> dict:
    """The slowest layers, mean milliseconds per inference, and their share of the total."""
    raw = model.layer_times(feed, runs)
    total_us = sum(entry["us"] for entry in raw["totals"].values()) or 1.0
    ranked = sorted(raw["totals"].items(), key=lambda item: -item[1]["us"])
    return {"source": raw["source"], "runs": runs, "layers_total": len(ranked),
            "total_ms": round(total_us / runs / 1000, 4),
            "layers": [{"name": name, "type": entry["type"], "exec_type": entry["exec_type"],
                        "mean_ms": round(entry["us"] / runs / 1000, 4),
                        "share": round(entry["us"] / total_us, 4)} for name, entry in ranked[:top]]}


BACKENDS = {"onnxruntime": OnnxRuntimeModel, "openvino": OpenVinoModel, "tensorrt": TensorRtModel,
            "tflite": TfliteModel}


# ---------------------------------------------------------------- bundle and inputs


def load_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path}: missing; is {bundle} an edgepipe bundle?") from None
    except ValueError as exc:
        raise RunError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("schema") != SCHEMA:
        raise RunError(f"{path}: schema is not {SCHEMA}")
    return manifest


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda h=handle: h.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(bundle: Path, manifest: dict) -> list:
    """Every listed file present and identical, nothing unlisted beside them (except what the
    manifest says the device itself writes: a TensorRT engine built there, its record)."""
    problems = []
    listed = set(manifest["backend"].get("engine", {}).get("device_files", []))
    for entry in manifest["files"]:
        listed.add(entry["path"])
        path = bundle / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']}: size {path.stat().st_size} bytes, "
                            f"manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    for path in sorted(p for p in bundle.rglob("*") if p.is_file() or p.is_symlink()):
        name = path.relative_to(bundle).as_posix()
        if name not in listed and name not in NOT_LISTED:
            problems.append(f"{name}: not listed in the manifest")
    return problems


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def check_signature(bundle: Path, public_key_pem: bytes, key_name: str = "the public key") -> list:
    """Why manifest.json is not signed by this key, or nothing. Hashes are verify()'s job."""
    import base64

    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        raise RunError("checking a signature needs the cryptography package: pip install cryptography",
                       3) from None
    try:
        public = serialization.load_pem_public_key(public_key_pem)
    except ValueError:
        raise RunError(f"{key_name}: not a PEM public key") from None
    if not isinstance(public, Ed25519PublicKey):
        raise RunError(f"{key_name}: not an Ed25519 public key")
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path = bundle / SIGNATURE_NAME
    if not path.is_file():
        return [f"{SIGNATURE_NAME}: missing: the bundle is not signed"]
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
        signer = str(record["key_id"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError):
        return [f"{SIGNATURE_NAME}: not a signature record written by edgepipe"]
    if signer != key_id(raw):
        return [f"{SIGNATURE_NAME}: signed by key {signer}, not by {key_name} ({key_id(raw)})"]
    if not (bundle / MANIFEST_NAME).is_file():
        return [f"{MANIFEST_NAME}: missing"]
    try:
        public.verify(signature, (bundle / MANIFEST_NAME).read_bytes())
    except InvalidSignature:
        return [f"{MANIFEST_NAME}: does not match its signature (the manifest or {SIGNATURE_NAME} "
                "was changed after signing)"]
    return []


def read_inputs(path: Path, specs: list) -> dict:
    try:
        if path.suffix == ".npy":
            if len(specs) != 1:
                raise RunError(f"{path}: the model has {len(specs)} inputs; use a .npz")
            arrays = {specs[0]["name"]: np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    feed = {}
    for spec in specs:
        if spec["name"] not in arrays:
            raise RunError(f"{path}: no array named '{spec['name']}'")
        array = arrays[spec["name"]]
        shapes = [spec["shape"], spec.get("device_shape")]  # TFLite: also the model's own layout
        if array.dtype.name != spec["dtype"] or list(array.shape) not in shapes:
            raise RunError(f"{path}: '{spec['name']}' is {array.dtype.name} {list(array.shape)}, "
                           f"the model expects {spec['dtype']} {spec['shape']}")
        feed[spec["name"]] = array
    return feed


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def read_image(path: Path, specs: list) -> dict:
    """An image fed the way calibration fed it, from the manifest's preprocessing record.

    The same steps as edgepipe.preprocessing (kept in step by a test): run.py must not
    import edgepipe.
    """
    pre = specs[0].get("preprocessing") if len(specs) == 1 else None
    if not pre or pre.get("kind") != "image":
        raise RunError(f"{path}: this bundle records no image preprocessing; give a .npy/.npz input")
    try:
        from PIL import Image
    except ImportError:
        raise RunError("image inputs need Pillow: pip install pillow", 3) from None
    try:
        with Image.open(path) as image:
            image = image.convert("L" if pre["channels"] == "gray" else "RGB")
            width, height = image.size
            factor = pre["resize"] / min(width, height)
            image = image.resize((max(1, round(width * factor)), max(1, round(height * factor))),
                                 Image.Resampling.BILINEAR)
            crop_h, crop_w = pre["crop"]
            left, top = (image.width - crop_w) // 2, (image.height - crop_h) // 2
            pixels = np.asarray(image.crop((left, top, left + crop_w, top + crop_h)), np.float32)
    except OSError as exc:
        raise RunError(f"{path}: unreadable image ({exc})") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pre["channels"] == "bgr":
        pixels = pixels[:, :, ::-1]
    mean, std = np.asarray(pre["mean"], np.float32), np.asarray(pre["std"], np.float32)
    pixels = (pixels * pre["scale"] - mean) / std
    if pre["layout"] == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    array = np.ascontiguousarray(pixels.astype(pre["dtype"]))[None]
    if list(array.shape) != specs[0]["shape"]:
        raise RunError(f"{path}: one image gives {list(array.shape)}, the model takes {specs[0]['shape']}")
    return {specs[0]["name"]: array}


def random_inputs(specs: list, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            feed[spec["name"]] = rng.standard_normal(spec["shape"]).astype(dtype)
        else:
            feed[spec["name"]] = rng.integers(0, 2, spec["shape"]).astype(dtype)
    return feed


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Hardware", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------- modes


def measure_energy(args: argparse.Namespace, bundle: Path, manifest: dict, model, feed: dict) -> dict:
    """Joules per inference from the target's meter (or --energy), or why there are none."""
    spec = args.energy or manifest["target"].get("energy", {}).get("meter", "none")
    sys.dont_write_bytecode = True  # energy/__pycache__ would be a file the manifest does not list
    sys.path.insert(0, str(bundle))
    try:
        from energy import MeterUnavailable, measure_window, open_meter
    except ImportError:
        return {"available": False, "meter": spec,
                "reason": "this bundle has no energy/ package (rebuild it)"}
    finally:
        sys.path.remove(str(bundle))
    try:
        meter = open_meter(spec, args.energy_root)
        meter.check()
    except MeterUnavailable as exc:
        return {"available": False, "meter": spec, "reason": str(exc)}

    def work() -> list:
        finished, deadline = [], time.perf_counter() + args.energy_seconds
        while time.perf_counter() < deadline or not finished:
            model.infer(feed)
            finished.append(time.perf_counter())
        return finished

    try:
        return measure_window(meter, work, idle_s=args.energy_idle_seconds)
    except MeterUnavailable as exc:
        return {"available": False, "meter": spec, "reason": str(exc)}


def benchmark(args: argparse.Namespace, bundle: Path, manifest: dict, feed: dict) -> dict:
    backend = BACKENDS[manifest["backend"]["name"]]
    started = time.perf_counter_ns()
    model = backend(bundle, manifest, args.threads, args.model_key)
    loaded = time.perf_counter_ns()
    model.infer(feed)
    first = time.perf_counter_ns()
    for _ in range(args.warmup):
        model.infer(feed)
    latencies = []
    # At least --runs runs, and at least --min-duration seconds of them: fast models need
    # many runs before the tail percentiles mean anything.
    deadline = time.perf_counter() + args.min_duration
    while len(latencies) < args.runs or time.perf_counter() < deadline:
        begin = time.perf_counter_ns()
        model.infer(feed)
        latencies.append((time.perf_counter_ns() - begin) / 1e6)
    layers = per_layer(model, feed, args.runs) if args.layers else None
    energy = measure_energy(args, bundle, manifest, model, feed)
    return {
        "energy": energy,
        "schema": "edgepipe.run/1",
        "per_layer": layers,
        "model": manifest["model"]["name"],
        "target": manifest["target"]["name"],
        "runtime": model.runtime,
        "warnings": model.warnings,
        "load_ms": (loaded - started) / 1e6,
        "first_inference_ms": (first - loaded) / 1e6,
        "warmup": args.warmup,
        "runs": len(latencies),
        "min_duration_s": args.min_duration,
        "latencies_ms": latencies,
        "peak_rss_mb": peak_rss_mb(),
        "host": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "machine": platform.machine(),
                 "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
                 "hostname": platform.node()},
    }


def run_once(args: argparse.Namespace, bundle: Path, manifest: dict, feed: dict) -> dict:
    model = BACKENDS[manifest["backend"]["name"]](bundle, manifest, args.threads, args.model_key)
    for warning in model.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    outputs = model.infer(feed)
    if args.output:
        np.savez(args.output, **outputs)
    return {name: {"shape": list(v.shape), "dtype": v.dtype.name,
                   "first_values": v.ravel()[:5].tolist()} for name, v in outputs.items()}


def parse_args(argv: list) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).resolve().parent
    parser.add_argument("--bundle", type=Path, default=here, help="bundle folder (default: here)")
    parser.add_argument("--verify", action="store_true", help="check files against the manifest")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"AES-256 key of an encrypted bundle (default: ${KEY_ENV})")
    parser.add_argument("--pubkey", type=Path, default=os.environ.get(PUBKEY_ENV) or None,
                        help=f"Ed25519 public key: check the signature and every file before running "
                             f"(default: ${PUBKEY_ENV})")
    parser.add_argument("--input", type=Path,
                        help=".npy/.npz input, or an image when the bundle records preprocessing "
                             "(default: random)")
    parser.add_argument("--output", type=Path, help="save outputs to this .npz")
    parser.add_argument("--seed", type=int, default=0, help="seed for random inputs")
    parser.add_argument("--benchmark", action="store_true", help="time repeated inference")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-duration", type=float, default=0.0,
                        help="keep timing until this many seconds have passed (and --runs reached)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads (default: the target's setting)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--energy", default=None,
                        help="energy meter (rapl, jetson, android, nvml, csv:PATH, none); "
                             "default: the target's")
    parser.add_argument("--energy-root", default="/", help=argparse.SUPPRESS)  # fixture trees in tests
    parser.add_argument("--energy-seconds", type=float, default=3.0,
                        help="how long to run inferences while the meter samples")
    parser.add_argument("--energy-idle-seconds", type=float, default=1.0,
                        help="idle baseline measured first and subtracted")
    parser.add_argument("--build-engine", action="store_true",
                        help="TensorRT bundles: build model.engine here (the TensorRT Python API, the "
                             "plan build_engine.sh runs with trtexec)")
    parser.add_argument("--layers", action="store_true",
                        help="with --benchmark: also time each layer (a separate profiled pass)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 0):
        parser.error("--runs must be >= 1, --warmup and --threads >= 0")
    return args


def main(argv: list | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.pubkey:
            # The signature first: a tampered manifest must fail as tampered, not as malformed.
            try:
                pem = Path(args.pubkey).read_bytes()
            except OSError as exc:
                raise RunError(f"{args.pubkey}: cannot read the public key ({exc.strerror})") from None
            problems = check_signature(args.bundle, pem, str(args.pubkey))
            for problem in problems:
                print(f"verify: {problem}", file=sys.stderr)
            if problems:
                return 1
        manifest = load_manifest(args.bundle)
        key_text = args.key_file or os.environ.get(KEY_ENV)
        args.model_key = None if key_text is None else parse_model_key(
            str(key_text), "--key-file" if args.key_file else f"${KEY_ENV}")
        if args.verify or args.pubkey:
            problems = verify(args.bundle, manifest) or engine_problems(args.bundle, manifest)
            for problem in problems:
                print(f"verify: {problem}", file=sys.stderr)
            if problems:
                return 1
            if args.verify and not (args.input or args.benchmark or args.output or args.build_engine):
                signed = " and its signature" if args.pubkey else ""
                print(f"verify: {len(manifest['files'])} files match the manifest{signed}")
                return 0
        if args.build_engine:
            build_engine(args.bundle, manifest, args.model_key)
            if not (args.input or args.benchmark or args.output):
                return 0
        if manifest["backend"]["name"] not in BACKENDS:
            raise RunError(f"this run.py cannot run backend '{manifest['backend']['name']}'", 3)
        specs = manifest["inputs"]
        if "tflite" in manifest["backend"]:
            io = manifest["backend"]["tflite"]["io"]
            device = {entry["name"]: entry["model_shape"] for entry in io["inputs"]}
            specs = [{**spec, "device_shape": device.get(spec["name"])} for spec in specs]
        if args.input and args.input.suffix.lower() in IMAGE_SUFFIXES:
            feed = read_image(args.input, specs)
        else:
            feed = read_inputs(args.input, specs) if args.input else random_inputs(specs, args.seed)
        if args.benchmark:
            result = benchmark(args, args.bundle, manifest, feed)
            if args.json:
                print(json.dumps(result))
            else:
                ordered = sorted(result["latencies_ms"])
                print(f"{result['model']} on {result['runtime']['name']} "
                      f"{result['runtime']['version']}: load {result['load_ms']:.1f} ms, "
                      f"first {result['first_inference_ms']:.2f} ms, "
                      f"median {ordered[len(ordered) // 2]:.3f} ms over {len(ordered)} runs")
        else:
            result = run_once(args, args.bundle, manifest, feed)
            print(json.dumps(result) if args.json else
                  "\n".join(f"{k}: {v['dtype']} {v['shape']} {v['first_values']}"
                            for k, v in result.items()))
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
