"""Detectors: fp32 against int8 mAP and latency on ONNX Runtime, OpenVINO and LiteRT, in one run.

The example shapes detector (examples/models/shapes_detector.py, YOLOv8-style, 128x128),
trained on synthetic scenes by examples/train_shapes.py, scored on 200 held-out scenes with
COCO boxes (mAP by pycocotools, in each target's own runtime). Per target, three bundles:

- fp32:                 `edgepipe build --profile fp32`;
- int8:                 `edgepipe build --profile int8` as shipped (mAP budget 1 point, speed gate on);
- int8, head quantized: the same with `[detect] keep_head_float = false` and the budget
                        opened, which is what a generic post-training int8 pass does to a detector.

Each bundle is timed by its own run.py in fresh processes, interleaved rounds (LiteRT on this x86
host: indicative only, XNNPACK's ARM kernels differ).

    python bench/bench_detector.py --threads 2 --rounds 3 --runs 50 [--data artifacts/shapes]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_timing_options, time_interleaved, write_report

DETECTOR = f"{ROOT / 'examples' / 'models' / 'shapes_detector.py'}:shapes_detector"
TARGETS = ("onnxruntime-cpu", "openvino-cpu", "android-arm64")
HEAD_QUANTIZED = ('name = "int8-head-quantized"\ndescription = "bench"\nextends = "int8"\n'
                  '[detect]\nkeep_head_float = false\n'
                  '[quantize.budget]\nmax_map_drop = 100\nmin_cosine = -1\nmin_speedup = 0\n')


def build(data: Path, target: str, profile: str, out: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "edgepipe", "build", DETECTOR, "--weights",
                           str(data / "shapes_detector.pt"), "--target", target, "--profile", profile,
                           "--calib", str(data / "calib"), "--eval", str(data / "val"), "--out", str(out),
                           "--force"], capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    outcome = {"exit": done.returncode, "seconds": round(time.perf_counter() - started, 1)}
    if done.returncode:
        outcome["message"] = done.stderr.strip().splitlines()[-1]
        return outcome
    manifest = json.loads((out / "manifest.json").read_text())
    quantize = next((s["metrics"] for s in manifest["stages"] if s["stage"] == "quantize"), None)
    if quantize:
        evaluation = quantize["evaluation"]
        outcome.update(float_map50_95=evaluation["float"]["map50_95"],
                       float_map50=evaluation["float"]["map50"],
                       map50_95=evaluation["int8"]["map50_95"], map50=evaluation["int8"]["map50"],
                       fallback_steps=len(quantize["fallback"]))
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder examples/train_shapes.py wrote (default: train one now, ~2 min)")
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    add_timing_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "detector.json")
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    common = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        data = args.data
        training = None
        if data is None:
            data = work / "shapes"
            started = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "examples" / "train_shapes.py"), "--out", str(data)],
                           check=True, cwd=ROOT, capture_output=True)
            training = round(time.perf_counter() - started, 1)
        (work / "head.toml").write_text(HEAD_QUANTIZED)
        for target in args.targets:
            bundles, outcomes = {}, {}
            for key, profile in (("fp32", "fp32"), ("int8", "int8"), ("int8, head quantized",
                                                                       str(work / "head.toml"))):
                out = work / f"{target}-{key.replace(', ', '-').replace(' ', '-')}"
                outcomes[key] = build(data, target, profile, out, env)
                if outcomes[key]["exit"] == 0:
                    bundles[key] = out
            scored = next((o for o in outcomes.values() if "float_map50_95" in o), None)
            if scored is not None:  # the float model as the target runs it, scored by the int8 build
                outcomes["fp32"].update(map50_95=scored["float_map50_95"], map50=scored["float_map50"])
            commands = {key: [sys.executable, str(bundle / "run.py"), "--benchmark", "--json", *common]
                        for key, bundle in bundles.items()}
            median = time_interleaved(commands, args.rounds)
            for key, ms in median.items():
                outcomes[key]["latency_ms"] = round(ms, 4)
                if "fp32" in median:
                    outcomes[key]["speedup_vs_fp32"] = round(median["fp32"] / ms, 3)
            results[target] = outcomes
            print(f"{target}: " + "  ".join(f"{k}: mAP {o.get('map50_95', float('nan')):.2f} "
                                             f"{o.get('latency_ms', float('nan')):.3f} ms"
                                             for k, o in outcomes.items()), flush=True)
    write_report(args.out, "detector", {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "data": "200 held-out synthetic scenes (COCO boxes), 128 calibration scenes",
        "training_seconds": training,
        "note": "LiteRT timed on this x86 host: indicative only"}, {"shapes_detector": results})


if __name__ == "__main__":
    main()
