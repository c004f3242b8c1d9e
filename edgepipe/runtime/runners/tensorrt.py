"""TensorRT: build this bundle's engine on the device and run it; the TensorRT Python API plus
the CUDA runtime through ctypes, and numpy.

The device's run.py (`--build-engine`, `--record-engine`, running) and the host's
`edgepipe build --from-bundle` use this one module, so engines are built the same way
everywhere, from the plan in the manifest. Whether an engine fits this machine is read
from its build record (`model.engine.json`) as data.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import strict_json
from ..bundle import inside
from ..errors import BackendError, BadInputError
from .base import Feed, Runner, Spec

RECORD_NAME = "model.engine.json"
TEGRA_RELEASE = Path("/etc/nv_tegra_release")  # present on every Jetson (L4T)


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise BackendError("TensorRT is not installed here: on a Jetson it comes with JetPack "
                           "(python3-libnvinfer); on a PC `pip install tensorrt` from NVIDIA's index",
                           ) from None
    return tensorrt


# ---------------------------------------------------------------- CUDA runtime (ctypes)

_CUDART_NAMES = ("cudart", "libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll")
_MEMCPY_HOST_TO_DEVICE, _MEMCPY_DEVICE_TO_HOST = 1, 2
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76  # cudaDevAttrComputeCapabilityMajor/Minor


class Cuda:
    """The five CUDA runtime calls inference needs. ctypes, because JetPack images carry
    libcudart but rarely cuda-python or pycuda, and this file must run there as it is."""

    def __init__(self) -> None:
        self.lib = None
        candidates = [ctypes.util.find_library("cudart"), *_CUDART_NAMES[1:]]
        for base in ("/usr/local/cuda/lib64", "/usr/local/cuda/targets/aarch64-linux/lib"):
            candidates.append(f"{base}/libcudart.so")
        for name in filter(None, candidates):
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if self.lib is None:
            raise BackendError("the CUDA runtime (libcudart) was not found: install CUDA / JetPack")
        self.lib.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
        self.lib.cudaFree.argtypes = [ctypes.c_void_p]
        self.lib.cudaMemcpy.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.lib.cudaStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        self.lib.cudaStreamSynchronize.argtypes = [ctypes.c_void_p]
        self.lib.cudaDeviceGetAttribute.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_int]

    def _check(self, status: int, call: str) -> None:
        if status != 0:
            self.lib.cudaGetErrorString.restype = ctypes.c_char_p
            raise BackendError(f"CUDA {call} failed: {self.lib.cudaGetErrorString(status).decode()}")

    def malloc(self, size: int) -> int:
        pointer = ctypes.c_void_p()
        self._check(self.lib.cudaMalloc(ctypes.byref(pointer), max(size, 1)), "cudaMalloc")
        return pointer.value

    def free(self, pointer: int) -> None:
        self.lib.cudaFree(ctypes.c_void_p(pointer))

    def to_device(self, pointer: int, array: np.ndarray) -> None:
        self._check(self.lib.cudaMemcpy(ctypes.c_void_p(pointer), array.ctypes.data, array.nbytes,
                                        _MEMCPY_HOST_TO_DEVICE), "cudaMemcpy")

    def to_host(self, array: np.ndarray, pointer: int) -> None:
        self._check(self.lib.cudaMemcpy(array.ctypes.data, ctypes.c_void_p(pointer), array.nbytes,
                                        _MEMCPY_DEVICE_TO_HOST), "cudaMemcpy")

    def stream(self) -> int:
        handle = ctypes.c_void_p()
        self._check(self.lib.cudaStreamCreate(ctypes.byref(handle)), "cudaStreamCreate")
        return handle.value or 0

    def synchronize(self, stream: int) -> None:
        self._check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def compute_capability(self, device: int = 0) -> str:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), _ATTR_CC_MAJOR, device),
                    "cudaDeviceGetAttribute")
        self._check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), _ATTR_CC_MINOR, device),
                    "cudaDeviceGetAttribute")
        return f"{major.value}.{minor.value}"


# ---------------------------------------------------------------- compatibility


def local_facts() -> dict:
    """This machine's TensorRT version and GPU; None where there is none."""
    facts: dict = {"tensorrt": None, "compute_capability": None, "jetson": None,
                   "machine": platform.machine()}
    with contextlib.suppress(ImportError):
        import tensorrt

        facts["tensorrt"] = tensorrt.__version__
    with contextlib.suppress(BackendError):
        facts["compute_capability"] = Cuda().compute_capability()
    with contextlib.suppress(OSError, IndexError):
        release = TEGRA_RELEASE.read_text(encoding="ascii", errors="replace")
        facts["jetson"] = release.splitlines()[0].strip("# ")
    return facts


def _line(version: str) -> str:
    return ".".join(version.split(".")[:2])


def compatibility_problems(plan: dict, record: dict | None, local: dict) -> list:
    """Why an engine (built per `record`, or to be built per `plan`) cannot run here.

    An engine loads only in the TensorRT line that built it and on the GPU architecture
    it was built for; TensorRT itself says so in a long log, this says it in one line.
    """
    built_with = (record or {}).get("tensorrt") or plan["tensorrt_version"]
    built_for = (record or {}).get("compute_capability") or plan.get("compute_capability")
    rebuild = "rebuild it here: `python3 run.py --build-engine` or `bash build_engine.sh`"
    problems = []
    if local.get("tensorrt") and _line(local["tensorrt"]) != _line(built_with):
        what = "model.engine was built with" if record else "this bundle targets"
        fix = rebuild if record else "rebuild the bundle for a target with this TensorRT"
        problems.append(f"{what} TensorRT {built_with}, this device has {local['tensorrt']}: {fix}")
    if built_for and local.get("compute_capability") and local["compute_capability"] != built_for:
        what = "model.engine was built for" if record else "this bundle targets"
        fix = rebuild if record else "use the target for this GPU"
        problems.append(f"{what} compute capability {built_for}, this GPU is "
                        f"{local['compute_capability']}: {fix}")
    return problems


# ---------------------------------------------------------------- build


def _calibrator(trt, cache: bytes):
    """Hands TensorRT 8.x the edgepipe-written cache; never calibrates (no batches)."""
    base = (trt.IInt8MinMaxCalibrator if b"MinMaxCalibration" in cache.split(b"\n", 1)[0]
            else trt.IInt8EntropyCalibrator2)

    class CacheOnlyCalibrator(base):
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names):
            return None

        def read_calibration_cache(self):
            return cache

        def write_calibration_cache(self, data) -> None:
            return None

    return CacheOnlyCalibrator()


def _network_flags(trt, plan: dict) -> int:
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    if explicit is not None and int(trt.__version__.split(".")[0]) < 10:
        flags |= 1 << int(explicit)  # implicit batch is gone in 10.x; 8.x needs this flag
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan["strongly_typed"] and strongly is not None:
        flags |= 1 << int(strongly)  # 11.x: always on, the flag may be gone
    return flags


def build(bundle: Path, plan: dict, onnx_bytes: bytes | None = None, log=print) -> dict:
    """Build `plan["engine"]` in `bundle` with the TensorRT Python API; return the build record.

    The engine is written under a temporary name and renamed, so an interrupted build
    never leaves a truncated engine where run.py would load it.
    """
    trt = import_tensorrt()
    local = local_facts()
    for problem in compatibility_problems(plan, None, local):
        raise BackendError(problem)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    source = inside(bundle, plan["onnx"])
    parsed = parser.parse(onnx_bytes) if onnx_bytes is not None else parser.parse_from_file(str(source))
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BadInputError(f"TensorRT could not parse {plan['onnx']}: {errors[0] if errors else 'unknown'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan["workspace_mib"] << 20)
    if plan["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan["int8_mode"] == "calibration-cache":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, inside(bundle, plan["calibration_cache"]).read_bytes())
    elif plan["int8_mode"] == "strongly-typed" and not plan["strongly_typed"]:
        config.set_flag(trt.BuilderFlag.INT8)
    if plan["sparsity"]:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if plan.get("builder_optimization_level") is not None:
        config.builder_optimization_level = plan["builder_optimization_level"]
    if plan["dla_core"] is not None:
        if builder.num_DLA_cores <= plan["dla_core"]:
            raise BackendError(f"DLA core {plan['dla_core']} asked, this device has {builder.num_DLA_cores}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan["dla_core"]
        if plan["gpu_fallback"]:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if plan["shapes"]:
        profile = builder.create_optimization_profile()
        for name, shape in plan["shapes"].items():
            profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        config.add_optimization_profile(profile)
    timing_path = inside(bundle, plan["timing_cache"])
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=True)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError("TensorRT could not build the engine (see its log above)")
    seconds = time.perf_counter() - started
    engine_path = inside(bundle, plan["engine"])
    temporary = engine_path.with_name(f".{engine_path.name}.{os.getpid()}")
    temporary.write_bytes(bytes(serialized))
    os.replace(temporary, engine_path)
    timing_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = write_record(bundle, plan, seconds, local)
    log(f"built {plan['engine']} ({engine_path.stat().st_size / 2**20:.1f} MiB) in {seconds:.1f} s "
        f"with TensorRT {record['tensorrt']} for compute capability {record['compute_capability']}")
    return record


def write_record(bundle: Path, plan: dict, seconds: float | None = None, local: dict | None = None) -> dict:
    """model.engine.json: who built the engine, for which GPU and TensorRT (read back as data)."""
    local = local or local_facts()
    engine = inside(bundle, plan["engine"])
    record = {"engine": plan["engine"], "sha256": hashlib.sha256(engine.read_bytes()).hexdigest(),
              "tensorrt": local["tensorrt"], "compute_capability": local["compute_capability"],
              "jetson": local["jetson"], "dla_core": plan["dla_core"], "precision": plan["precision"],
              "build_seconds": None if seconds is None else round(seconds, 1),
              "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "plan": plan}
    (bundle / RECORD_NAME).write_text(strict_json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def read_record(bundle: Path) -> dict | None:
    try:
        record = json.loads((bundle / RECORD_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def engine_problems(bundle: Path, manifest: Mapping[str, Any]) -> list[str]:
    """A TensorRT bundle's engine built for another TensorRT line or GPU than this machine's,
    judged from its build record; nothing of the bundle is imported or run."""
    plan = manifest["backend"].get("engine")
    if not isinstance(plan, dict) or not (bundle / str(plan.get("engine", ""))).is_file():
        return []
    return compatibility_problems(plan, read_record(bundle), local_facts())


# ---------------------------------------------------------------- run


class TensorRtRunner(Runner):
    """The built engine, run on GPU 0 through the v3 tensor API (TensorRT 8.5 and later)."""

    backend = "tensorrt"

    def __init__(self, bundle: Path, plan: Mapping[str, Any], inputs: Sequence[Spec], *,
                 threads: int | None = None) -> None:
        super().__init__(inputs, str(plan["engine"]))
        self.bundle, self.plan = bundle, dict(plan)
        self._buffers: dict[str, tuple[int, int]] = {}

    def _activate(self) -> None:
        trt = import_tensorrt()
        plan = self.plan
        engine_path = inside(self.bundle, plan["engine"])
        if not engine_path.is_file():
            raise BackendError(f"no {plan['engine']} yet: build it on this device with "
                               "`python3 run.py --build-engine` or `bash build_engine.sh`")
        record = read_record(self.bundle)
        problems = compatibility_problems(plan, record, local_facts())
        if problems:
            raise BackendError(problems[0])
        self.cuda = Cuda()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT {trt.__version__} could not load {plan['engine']} (built by "
                               "another TensorRT or GPU?): rebuild it with `python3 run.py --build-engine`")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.trt = trt
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.runtime = {"name": "tensorrt", "version": trt.__version__,
                        "compute_capability": self.cuda.compute_capability(),
                        "dla_core": plan["dla_core"], "precision": plan["precision"]}
        if not record:
            self.warnings.append(f"{plan['engine']} has no {RECORD_NAME}: who built it is unknown")

    def _deactivate(self) -> None:
        for pointer, _ in self._buffers.values():
            self.cuda.free(pointer)
        self._buffers = {}
        self.context = self.engine = None

    def _buffer(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (None, 0))
        if pointer is None or size < nbytes:
            if pointer is not None:
                self.cuda.free(pointer)
            pointer = self.cuda.malloc(nbytes)
            self._buffers[name] = (pointer, nbytes)
            self.context.set_tensor_address(name, pointer)
        return pointer

    def _infer(self, feed: Feed) -> dict[str, np.ndarray]:
        for name in self.input_names:
            dtype = self.trt.nptype(self.engine.get_tensor_dtype(name))
            array = np.asarray(feed[name], dtype=dtype, order="C")  # 0-d stays 0-d
            self.context.set_input_shape(name, array.shape)
            self.cuda.to_device(self._buffer(name, array.nbytes), array)
        outputs = {}
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))
            self._buffer(name, outputs[name].nbytes)
        if not self.context.execute_async_v3(self.stream):
            raise BackendError("TensorRT inference failed (see its log above)")
        self.cuda.synchronize(self.stream)
        for name, array in outputs.items():
            self.cuda.to_host(array, self._buffers[name][0])
        return outputs

    def layer_times(self, feed: Feed, runs: int) -> dict[str, Any]:
        """Per-layer times from TensorRT's IProfiler (synchronous per layer, so slower overall)."""
        totals: dict[str, Any] = {}
        base = self.trt.IProfiler

        class Profiler(base):
            def __init__(self) -> None:
                base.__init__(self)  # pybind11 trampolines need the base initialised explicitly

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                entry = totals.setdefault(layer_name, {"type": "", "exec_type": "tensorrt", "us": 0.0})
                entry["us"] += ms * 1000.0

        self.context.profiler = Profiler()
        try:
            for _ in range(runs):
                self._infer(feed)
        finally:
            self.context.profiler = None
        return {"source": "TensorRT IProfiler", "runs": runs, "totals": totals}
