"""CPU headline benchmark: edgepipe's OpenVINO int8 bundle against every route a user would hand-write.

Candidates per model, each timed in its own process, interleaved rounds, medians,
same thread count for all (DESIGN.md section 7):
- torch-eager:     the PyTorch model, inference mode, fp32;
- ort-fp32:        torch.onnx.export's model in a default ONNX Runtime session;
- ort-int8-u8:     quant_pre_process + quantize_static by hand, uint8 activations, per-channel;
- ov-f32:          ov.convert_model of the same ONNX, INFERENCE_PRECISION_HINT f32 explicit;
- nncf-int8:       nncf.quantize on the OpenVINO model with the same calibration data, as
                   NNCF's docs show (Dataset + quantize + save_model(compress_to_fp16=False));
- edgepipe-int8:   `edgepipe build --target openvino-cpu --profile int8` (QDQ written by NNCF,
                   the target's default engine), timed by its run.py;
- edgepipe-int8-ort-engine: the same with `[quantize] engine = "onnxruntime"`;
- edgepipe-int8-nncf-ov: the same with `engine = "nncf-openvino"` (NNCF on the OpenVINO model).

Calibration: 100 seeded standard-normal images; fidelity (cosine and top-1 agreement
with fp32) on 32 others: no labelled ImageNet data ships here.

    python bench/bench_openvino.py --threads 2 --rounds 3 --runs 30
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_int8 import by_hand_quantize_static, images
from common import ROOT, add_timing_options, time_interleaved, write_report

MODELS = {
    "resnet18": "examples/models/resnet.py:resnet18",
    "mobilenet_v2": "examples/models/mobilenet_v2.py:mobilenet_v2_imagenet",
}


def _nncf_by_hand(source: Path, out: Path, calib: np.ndarray) -> float:
    import nncf
    import openvino as ov

    started = time.perf_counter()
    model = ov.convert_model(str(source))
    quantized = nncf.quantize(model, nncf.Dataset(list(calib)), subset_size=len(calib))
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return time.perf_counter() - started


def _outputs(path: Path, inputs: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.stack([compiled(x)[0][0] for x in inputs])


def _fidelity(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cosine = [float(np.dot(r, g) / (np.linalg.norm(r) * np.linalg.norm(g)))
              for r, g in zip(reference, got, strict=True)]
    return {"mean_cosine": float(np.mean(cosine)),
            "top1_agreement": float(np.mean(reference.argmax(1) == got.argmax(1)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_timing_options(parser)
    parser.add_argument("--calib", type=int, default=100)
    parser.add_argument("--eval", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "openvino.json")
    args = parser.parse_args()
    common = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    workers = str(ROOT / "bench" / "workers.py")
    edgepipe = [sys.executable, "-m", "edgepipe"]
    results = {}
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        calib, held_out = images(args.calib, 1), images(args.eval, 2)
        np.savez(work / "calib.npz", input=calib)
        np.savez(work / "eval.npz", input=held_out)
        for name in args.models:
            fp32 = work / f"{name}-fp32"
            subprocess.run([*edgepipe, "build", MODELS[name], "--target", "onnxruntime-cpu", "--out", fp32],
                           check=True, cwd=ROOT, capture_output=True)
            exported = fp32.with_name(fp32.name + ".build") / "00-export.onnx"
            engines = {}
            for key, engine in (("edgepipe-int8-ort-engine", "onnxruntime"),
                                ("edgepipe-int8-nncf-ov", "nncf-openvino")):
                engines[key] = work / f"{engine}.toml"
                engines[key].write_text(f'name = "int8-{engine}"\ndescription = "bench"\nextends = "int8"\n'
                                        f'[quantize]\nengine = "{engine}"\n')
            seconds = {}
            for key, profile in (("edgepipe-int8", "int8"), *((k, str(v)) for k, v in engines.items())):
                started = time.perf_counter()
                subprocess.run([*edgepipe, "build", MODELS[name], "--target", "openvino-cpu", "--profile",
                                profile, "--calib", work / "calib.npz", "--eval", work / "eval.npz",
                                "--out", work / f"{name}-{key}"], check=True, cwd=ROOT, capture_output=True)
                seconds[key] = time.perf_counter() - started
            int8, int8_ort = work / f"{name}-edgepipe-int8", work / f"{name}-edgepipe-int8-ort-engine"
            int8_nncf_ov = work / f"{name}-edgepipe-int8-nncf-ov"
            ort_u8, nncf_xml = work / f"{name}-u8.onnx", work / f"{name}-nncf.xml"
            seconds["ort-int8-u8"] = by_hand_quantize_static(exported, ort_u8, calib, u8=True)
            seconds["nncf-int8"] = _nncf_by_hand(exported, nncf_xml, calib)
            candidates = {
                "torch-eager": [sys.executable, workers, "torch", str(ROOT / MODELS[name]), *common],
                "ort-fp32": [sys.executable, workers, "ort", str(exported), *common],
                "ort-int8-u8": [sys.executable, workers, "ort", str(ort_u8), *common],
                "ov-f32": [sys.executable, workers, "ov", str(exported), *common],
                "nncf-int8": [sys.executable, workers, "ov", str(nncf_xml), *common],
                "edgepipe-int8": [sys.executable, str(int8 / "run.py"), "--benchmark", "--json", *common],
                "edgepipe-int8-ort-engine": [sys.executable, str(int8_ort / "run.py"), "--benchmark",
                                             "--json", *common],
                "edgepipe-int8-nncf-ov": [sys.executable, str(int8_nncf_ov / "run.py"), "--benchmark",
                                          "--json", *common],
            }
            median = time_interleaved(candidates, args.rounds)
            reference = _outputs(exported, held_out)
            fidelity = {"nncf-int8": _fidelity(reference, _outputs(nncf_xml, held_out)),
                        "edgepipe-int8": _fidelity(reference, _outputs(int8 / "model.xml", held_out)),
                        "edgepipe-int8-ort-engine": _fidelity(reference,
                                                              _outputs(int8_ort / "model.xml", held_out)),
                        "edgepipe-int8-nncf-ov": _fidelity(reference,
                                                           _outputs(int8_nncf_ov / "model.xml", held_out))}
            results[name] = {
                "median_ms": median,
                "speedup_vs_torch_eager": {k: median["torch-eager"] / v for k, v in median.items()},
                "edgepipe_vs_nncf": median["edgepipe-int8"] / median["nncf-int8"],
                "quantization_seconds": seconds,
                "fidelity_vs_fp32": fidelity,
            }
            print(f"{name}: " + "  ".join(f"{k} {v:.2f} ms" for k, v in median.items()), flush=True)
            print(f"    edgepipe/nncf latency {results[name]['edgepipe_vs_nncf']:.2f}x, "
                  f"edgepipe vs eager {results[name]['speedup_vs_torch_eager']['edgepipe-int8']:.2f}x, "
                  f"fidelity {fidelity}", flush=True)
    write_report(args.out, "openvino-cpu", {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "batch": 1, "calibration_samples": args.calib, "eval_samples": args.eval,
        "inputs": "seeded standard-normal images"},
        results)


if __name__ == "__main__":
    main()
