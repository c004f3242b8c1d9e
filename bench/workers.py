"""Timing workers for bench_cpu.py: each run times one candidate in its own process.

    python bench/workers.py torch FILE.py:FACTORY --threads 2 --runs 30 --warmup 10
    python bench/workers.py ort MODEL.onnx --threads 2 --runs 30 --warmup 10
    python bench/workers.py ov MODEL.xml --threads 2 --runs 30 --warmup 10

Prints one JSON object with the raw latencies in milliseconds (and, for ONNX
Runtime, session load and first-inference times, as the bundle's run.py reports).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time


def _time(infer, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        infer()
    latencies = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        infer()
        latencies.append((time.perf_counter_ns() - start) / 1e6)
    return latencies


def torch_eager(spec: str, threads: int, runs: int, warmup: int) -> dict:
    """What a user runs without edgepipe: the model in eager PyTorch, inference mode."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    file, _, name = spec.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("bench_model", file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules["bench_model"] = module  # dataclasses in the model file look themselves up here
    module_spec.loader.exec_module(module)
    model, examples = getattr(module, name)()
    args = tuple(examples.values())
    with torch.inference_mode():
        return {"latencies_ms": _time(lambda: model(*args), runs, warmup)}


def plain_onnxruntime(path: str, threads: int, runs: int, warmup: int, level: str = "all") -> dict:
    """The hand-written route: torch.onnx.export's model in a default ORT CPU session."""
    import numpy as np
    import onnxruntime as ort

    started = time.perf_counter_ns()
    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {}
    for value in session.get_inputs():
        shape = [int(d) for d in value.shape]
        if "float" in value.type:
            feed[value.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            feed[value.name] = rng.integers(0, 2, shape).astype(np.int64)
    loaded = time.perf_counter_ns()
    session.run(None, feed)
    first = time.perf_counter_ns()
    return {"latencies_ms": _time(lambda: session.run(None, feed), runs, warmup),
            "load_ms": (loaded - started) / 1e6, "first_inference_ms": (first - loaded) / 1e6}


def openvino_model(path: str, threads: int, runs: int, warmup: int, precision: str = "f32") -> dict:
    """An OpenVINO IR or ONNX file compiled for CPU the way its docs show, precision explicit."""
    import numpy as np
    import openvino as ov

    started = time.perf_counter_ns()
    compiled = ov.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                     "INFERENCE_NUM_THREADS": threads,
                                                     "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    rng = np.random.default_rng(0)
    feed = {i: rng.standard_normal(list(port.shape)).astype(np.float32)
            for i, port in enumerate(compiled.inputs)}
    loaded = time.perf_counter_ns()
    request.infer(feed)
    first = time.perf_counter_ns()
    return {"latencies_ms": _time(lambda: request.infer(feed), runs, warmup),
            "load_ms": (loaded - started) / 1e6, "first_inference_ms": (first - loaded) / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["torch", "ort", "ov"])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--level", choices=["all", "disabled"], default="all",
                        help="ONNX Runtime graph optimization level (ort only)")
    parser.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                        help="OpenVINO's INFERENCE_PRECISION_HINT (ov only)")
    args = parser.parse_args()
    if args.kind == "torch":
        result = torch_eager(args.model, args.threads, args.runs, args.warmup)
    elif args.kind == "ov":
        result = openvino_model(args.model, args.threads, args.runs, args.warmup, args.precision)
    else:
        result = plain_onnxruntime(args.model, args.threads, args.runs, args.warmup, args.level)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
