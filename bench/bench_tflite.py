"""TFLite on this x86 host (indicative only: phones and Pis are measured with `edgepipe profile --host`).

Candidates per model, each timed in its own process, interleaved rounds, medians,
same thread count for all (DESIGN.md section 7):
- ort-fp32:       torch.onnx.export's model in a default ONNX Runtime session (the usual baseline);
- litert-fp32:    `edgepipe build --target mobile` (litert-torch), timed by its run.py in ai-edge-litert;
- litert-int8:    `edgepipe build --target mobile --profile int8` (PT2E, calibrated), the same way;
- litert-int8-onnx2tf: the int8 build from the exported ONNX (onnx2tf route, float I/O).

Calibration: the digits CNN on sklearn's digits training split; MobileNetV2 (ImageNet
weights) on 32 seeded standard-normal images. Sizes are the .tflite files.

    python bench/bench_tflite.py --threads 2 --rounds 3 --runs 50
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import images
from common import ROOT, add_timing_options, time_interleaved, write_report

MODELS = {
    "digits_cnn": "examples/models/digits_cnn.py:digits_cnn",
    "mobilenet_v2": "examples/models/mobilenet_v2.py:mobilenet_v2_imagenet",
}


def calibration(name: str, path: Path) -> None:
    if name == "digits_cnn":
        sys.path.insert(0, str(ROOT))
        from examples.train_digits import load_digits_split

        x_train, _, _, _ = load_digits_split(0)
        np.savez(path, input=x_train[:300])
    else:
        np.savez(path, input=images(32, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_timing_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tflite.json")
    args = parser.parse_args()
    common = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    edgepipe = [sys.executable, "-m", "edgepipe"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        for name in args.models:
            calib = work / f"{name}-calib.npz"
            calibration(name, calib)
            bundles, seconds = {}, {}
            int8 = ["--profile", "int8", "--calib", calib]
            for key, extra in (("litert-fp32", []), ("litert-int8", int8)):
                bundles[key] = work / f"{name}-{key}"
                started = time.perf_counter()
                subprocess.run([*edgepipe, "build", MODELS[name], "--target", "mobile", *map(str, extra),
                                "--out", bundles[key]], check=True, cwd=ROOT, capture_output=True, env=env)
                seconds[key] = time.perf_counter() - started
            fp32 = bundles["litert-fp32"]
            exported = fp32.with_name(fp32.name + ".build") / "00-export.onnx"
            bundles["litert-int8-onnx2tf"] = work / f"{name}-onnx2tf"
            started = time.perf_counter()
            subprocess.run([*edgepipe, "build", exported, "--target", "mobile", *map(str, int8),
                            "--out", bundles["litert-int8-onnx2tf"]], check=True, cwd=ROOT,
                           capture_output=True, env=env)
            seconds["litert-int8-onnx2tf"] = time.perf_counter() - started
            worker = str(ROOT / "bench" / "workers.py")
            candidates = {"ort-fp32": [sys.executable, worker, "ort", str(exported), *common]}
            for key, bundle in bundles.items():
                candidates[key] = [sys.executable, str(bundle / "run.py"), "--benchmark", "--json", *common]
            median = time_interleaved(candidates, args.rounds)
            sizes = {key: (bundle / "model.tflite").stat().st_size for key, bundle in bundles.items()}
            sizes["onnx-fp32"] = exported.stat().st_size
            results[name] = {
                "median_ms": median,
                "speedup_vs_ort_fp32": {k: median["ort-fp32"] / v for k, v in median.items()},
                "int8_vs_litert_fp32": median["litert-fp32"] / median["litert-int8"],
                "bytes": sizes,
                "build_seconds": seconds,
            }
            print(f"{name}: " + "  ".join(f"{k} {v:.3f} ms" for k, v in median.items()), flush=True)
    write_report(args.out, "tflite-host", {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "batch": 1, "note": "x86 host, indicative only; XNNPACK kernels differ on ARM"}, results)


if __name__ == "__main__":
    main()
