"""int8 for TensorRT targets: edgepipe against NVIDIA ModelOpt's ONNX PTQ, on real models, in one run.

TensorRT cannot run on this host, so each int8 model is scored as ONNX defines it (ONNX Runtime
with every graph optimization off: each Q/DQ pair rounds exactly where the graph puts it, which is
what TensorRT computes up to its kernels' accumulation order). The same real-weight models and
photos as bench_int8_real.py: MobileNetV2 with ImageNet weights (scored against labels and the
float model) and YOLOv8n (nudenet's 320n.onnx, raw head output, scored against the float model).
Calibration: 128 views of 22 photos; evaluation: views of 20 other photos.

- edgepipe:        `edgepipe build --target jetson --profile int8` (default budget), its model.onnx;
- modelopt:        `python -m modelopt.onnx.quantization --quantize_mode int8 --calibration_eps cpu`
                   (its defaults: entropy calibration, fp16 elsewhere), what a TensorRT user runs by
                   hand; in its own venv (`make modelopt`: it pins its own onnx and onnxruntime-gpu);
- modelopt (max):  the same with `--calibration_method max`.

Per candidate: accuracy, build time, Q/DQ count, where the Q/DQ pairs sit (which op types read a
quantized activation) and the TensorRT speed-up over fp16 that edgepipe estimates for the target's
GPU (trt/estimate.py), the same estimate for every candidate.

    make modelopt && python bench/bench_tensorrt_int8.py
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_int8_real import MODELS, RealModel, bundle_model, edgepipe_build, prepare
from common import ROOT, write_report

from tests.third_party import photos

MODELOPT_PYTHON = ROOT / ".venv-modelopt" / "bin" / "python"
TARGET = "jetson-orin-nano"


def as_onnx_defines(path: Path, images: np.ndarray) -> np.ndarray:
    """First output per image, every ONNX Runtime graph optimization off (no Q/DQ folding)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads, options.log_severity_level = 2, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None]})[0] for image in images])


def scores(out: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    flat, ref = out.reshape(len(out), -1).astype(np.float64), reference.reshape(len(reference), -1)
    cosine = np.sum(flat * ref, 1) / np.linalg.norm(flat, axis=1) / np.linalg.norm(ref, axis=1)
    found = {"mean_cosine": round(float(cosine.mean()), 4), "min_cosine": round(float(cosine.min()), 4)}
    if out.ndim == 2:
        found["top1_agreement"] = round(float(np.mean(out.argmax(1) == reference.argmax(1))), 3)
    if labels is not None:
        found["top1"] = round(float(np.mean(out.argmax(1) == labels)) * 100, 2)
    return found


def placement(path: Path) -> dict[str, object]:
    """Q/DQ pairs, and per op type how many of its activation inputs are read through one."""
    import onnx

    model = onnx.load(str(path))
    weights = {tensor.name for tensor in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    reads: collections.Counter[str] = collections.Counter()
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for name in node.input:
            dequantize = producers.get(name)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producers.get(dequantize.input[0])
            if quantize is not None and quantize.input[0] not in weights:  # an activation, not a weight
                reads[node.op_type] += 1
    return {"quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in model.graph.node),
            "quantized_activation_reads": dict(sorted(reads.items()))}


def modelopt(model: Path, calib: Path, out: Path, method: str) -> dict:
    path = out / f"modelopt-{method}.onnx"
    started = time.perf_counter()
    done = subprocess.run([str(MODELOPT_PYTHON), "-m", "modelopt.onnx.quantization",
                           "--onnx_path", str(model), "--quantize_mode", "int8",
                           "--calibration_method", method,
                           "--calibration_data_path", str(calib), "--calibration_eps", "cpu",
                           "--output_path", str(path)], capture_output=True, text=True, check=False, cwd=out)
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0 or not path.is_file():
        return {"exit": done.returncode, "seconds": seconds, "model": None,
                "message": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"exit": 0, "seconds": seconds, "model": path}


def bench_model(spec: RealModel, work: Path) -> dict[str, object]:
    from edgepipe.config import load_target
    from edgepipe.trt.estimate import estimate

    device = load_target(TARGET).device
    data = prepare(spec, work)
    model, calib_images, eval_images, labels = data.model, data.calib_images, data.eval_images, data.labels
    calib, evaluation = data.calib, data.evaluation
    modelopt_calib = work / "calib-modelopt.npz"  # ModelOpt batches along axis 0: (N, 3, H, W)
    np.savez(modelopt_calib, **{spec.input_name: calib_images})
    rows: dict[str, dict] = {}
    out = work / "edgepipe-jetson"
    build = edgepipe_build(model, TARGET, calib, evaluation, out)
    rows["edgepipe"] = {**build, "model": bundle_model(out) if build["exit"] == 0 else None}
    print(f"   edgepipe: {build}", flush=True)
    if MODELOPT_PYTHON.is_file():
        for label, method in (("modelopt", "entropy"), ("modelopt (max)", "max")):
            rows[label] = modelopt(model, modelopt_calib, work, method)
            print(f"   {label}: exit {rows[label]['exit']}, {rows[label]['seconds']} s", flush=True)
    else:
        rows["modelopt"] = {"model": None, "message": "ModelOpt not installed (make modelopt)"}
    reference = as_onnx_defines(model, eval_images)
    for label, row in rows.items():
        if row["model"] is None:
            continue
        row["accuracy"] = scores(as_onnx_defines(row["model"], eval_images), reference, labels)
        row["placement"] = placement(row["model"])
        # TensorRT 10 (the Orin Nano's) builds QDQ models strongly typed: float layers run fp32
        # unless the model stores them fp16 (ModelOpt converts them)
        row["estimate_vs_fp16"] = estimate(row["model"], device, "fp32").to_json()
        row["model"] = row["model"].name
        print(f"   {label}: {row['accuracy']} {row['placement']} est {row['estimate_vs_fp16']['speedup']}x",
              flush=True)
    results: dict[str, object] = {"model": spec.title, "evaluation_views": spec.evaluation, "target": TARGET}
    if labels is not None:
        results["float_top1"] = round(float(np.mean(reference.argmax(1) == labels)) * 100, 2)
    results["candidates"] = rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tensorrt_int8.json")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    if photos.missing():
        sys.exit("photos missing: run `make third-party` first")
    results: dict[str, object] = {}
    for name in args.models.split(","):
        print(f"== {name}", flush=True)
        with tempfile.TemporaryDirectory(prefix="edgepipe-bench-trt-int8-") as scratch:
            results[name] = bench_model(MODELS[name], Path(scratch))
    modelopt_version = subprocess.run(
        [str(MODELOPT_PYTHON), "-c", "import modelopt; print(modelopt.__version__)"], capture_output=True,
        text=True, check=False).stdout.strip() if MODELOPT_PYTHON.is_file() else None
    write_report(args.out,
                 "int8 for TensorRT targets: edgepipe vs NVIDIA ModelOpt (scored as ONNX defines it)",
                 {"calibration": "128 views of 22 photos", "modelopt": modelopt_version,
                  "evaluation": "views of 20 labelled ImageNet validation photos (other photos than "
                                "calibration's); ONNX Runtime with graph optimizations off",
                  "estimate": f"trt/estimate.py roofline for {TARGET}'s GPU"},
                 results)


if __name__ == "__main__":
    main()
