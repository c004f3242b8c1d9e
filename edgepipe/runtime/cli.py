"""Run, time, verify or build (TensorRT) an edgepipe bundle: the bundle's run.py, and the host's
`python -m edgepipe.runtime` (what `edgepipe profile` runs in a fresh process).

Needs only numpy and the backend's runtime (e.g. `pip install numpy onnxruntime`):

    python run.py --verify
    python run.py --verify --pubkey release.pub   # also the Ed25519 signature (needs cryptography)
    python run.py --input sample.npz --output out.npz
    python run.py --input photo.jpg        # decoded and preprocessed as at calibration (needs Pillow)
                                           # detectors: also boxes, scores, classes (image pixels)
    python run.py --benchmark --runs 100 --warmup 10 --threads 2 --json
    python3 run.py --build-engine          # TensorRT bundles: build model.engine on this device
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import strict_json
from .benchmark import BenchmarkOptions, benchmark
from .bundle import load_manifest, verify_files
from .detection import detect_batch, graph_detections, to_image_pixels
from .errors import BadInputError, EdgepipeError, first_line
from .feeds import IMAGE_SUFFIXES, image_size, read_feed
from .keys import KEY_ENV, model_bytes, parse_model_key
from .runners import open_runner
from .runners.tensorrt import build, engine_problems, write_record
from .signature import check_signature, read_public_key

DETECTION_KEYS = ("boxes", "scores", "classes", "batch")  # printed whole: max_detections rows an image
PUBKEY_ENV = "EDGEPIPE_PUBKEY"  # a public key file: verify the bundle before every run
# More threads than any board has cores: a typo (--threads 3000) rather than a setting. Not tied
# to this machine's cores, since a profile may ask for a device's count on a smaller host.
MAX_THREADS = 256


def verify(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    """What differs between the bundle on disk and its manifest, or an engine built for another
    machine; empty when intact. Reads the bundle as data only."""
    return verify_files(bundle, manifest) or engine_problems(bundle, manifest)


def build_engine(bundle: Path, manifest: dict[str, Any], key: bytes | None) -> dict[str, Any]:
    """--build-engine: the plan in the manifest, through the TensorRT Python API, on this device."""
    plan = manifest["backend"].get("engine")
    if not plan:
        raise BadInputError(f"--build-engine: this is a {manifest['backend']['name']} bundle, not a "
                            "TensorRT one")
    return build(bundle, plan, model_bytes(bundle, manifest, plan["onnx"], key),
                 log=lambda line: print(line, file=sys.stderr))


def detections(manifest: dict[str, Any], outputs: dict[str, np.ndarray],
               image: Path | None) -> dict[str, np.ndarray]:
    """A detector bundle's boxes (x1 y1 x2 y2), scores, classes and the image of the batch each
    belongs to (`batch`), from its raw head as the manifest's `postprocess` says; in the image's own
    pixels when the input was an image, else in the input's."""
    post = manifest.get("postprocess")
    if not post or post.get("kind") != "detection":
        return {}
    if post.get("nms") == "graph":  # the model did it: its fixed-size outputs, cut to num_dets
        found = graph_detections(outputs)
    else:
        head = outputs.get(post["output"], next(iter(outputs.values())))
        found = detect_batch(head, score_threshold=post["score_threshold"],
                             iou_threshold=post["iou_threshold"], max_detections=post["max_detections"],
                             classes=post.get("classes"))
    if image is not None and image.suffix.lower() in IMAGE_SUFFIXES:
        width, height = image_size(image)
        pre = manifest["inputs"][0]["preprocessing"]
        found["boxes"] = to_image_pixels(found["boxes"], width, height, pre)
    return found


def run_once(bundle: Path, manifest: dict[str, Any], feed: dict[str, np.ndarray], threads: int | None,
             key: bytes | None, output: Path | None, image: Path | None = None) -> dict[str, Any]:
    with open_runner(bundle, manifest, threads=threads, key=key) as runner:
        for warning in runner.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        outputs = runner.infer(feed)
    found = detections(manifest, outputs, image)
    outputs = {**outputs, **{key: value for key, value in found.items() if key not in outputs}}
    if output is not None:
        if output.is_dir():
            raise BadInputError(f"--output {output}: a folder; give a file name ending in .npz")
        if output.suffix == "":
            output = output.with_suffix(".npz")
        if output.suffix != ".npz":
            raise BadInputError(f"--output {output}: give a file name ending in .npz")
        try:
            with output.open("wb") as handle:
                np.savez(handle, **outputs)
        except OSError as exc:
            raise BadInputError(f"--output {output}: cannot write ({exc.strerror})") from None
    return {name: {"shape": list(v.shape), "dtype": v.dtype.name, "first_values": v.ravel()[:5].tolist(),
                   **({"values": v.tolist()} if name in DETECTION_KEYS and "postprocess" in manifest else {})}
            for name, v in outputs.items()}


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line and exit 2, like every other error of run.py (`--help` for usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (python3 run.py --help)\n")


def parse_args(argv: list[str], default_bundle: Path | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=default_bundle, required=default_bundle is None,
                        help="bundle folder (default: the folder of run.py)")
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
    parser.add_argument("--record-engine", action="store_true",
                        help="TensorRT bundles: after build_engine.sh, note who built model.engine")
    parser.add_argument("--layers", action="store_true",
                        help="with --benchmark: also time each layer (a separate profiled pass)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    args = parser.parse_args(argv)
    threads_ok = args.threads is None or 0 <= args.threads <= MAX_THREADS
    if args.runs < 1 or args.warmup < 0 or not threads_ok:
        parser.error(f"--runs must be >= 1, --warmup >= 0 and --threads between 0 and {MAX_THREADS}")
    if args.min_duration < 0:
        parser.error("--min-duration must be >= 0")
    return args


def _print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(strict_json.dumps(result))
    elif "latencies_ms" in result:
        ordered = sorted(result["latencies_ms"])
        print(f"{result['model']} on {result['runtime']['name']} {result['runtime']['version']}: "
              f"load {result['load_ms']:.1f} ms, first {result['first_inference_ms']:.2f} ms, "
              f"median {ordered[len(ordered) // 2]:.3f} ms over {len(ordered)} runs")
    else:
        print("\n".join(f"{k}: {v['dtype']} {v['shape']} {v['first_values']}" for k, v in result.items()))


def _main(args: argparse.Namespace) -> int:
    if args.pubkey:
        # The signature first: a tampered manifest must fail as tampered, not as malformed, and
        # nothing else of the bundle is read before it holds.
        problems = check_signature(args.bundle, read_public_key(args.pubkey), str(args.pubkey))
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        if problems:
            return 1
    manifest = load_manifest(args.bundle)
    key_text = args.key_file or os.environ.get(KEY_ENV)
    key = None if key_text is None else parse_model_key(
        str(key_text), "--key-file" if args.key_file else f"${KEY_ENV}")
    if args.verify or args.pubkey:
        # --record-engine is about to replace the engine's record: judge the files, not the old record.
        problems = (verify_files(args.bundle, manifest) if args.record_engine and not args.verify
                    else verify(args.bundle, manifest))
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        if problems:
            return 1
        if args.verify and not (args.input or args.benchmark or args.output or args.build_engine
                                or args.record_engine):
            signed = " and its signature" if args.pubkey else ""
            print(f"verify: {len(manifest['files'])} files match the manifest{signed}")
            return 0
    if args.build_engine:
        build_engine(args.bundle, manifest, key)
    if args.record_engine:
        plan = manifest["backend"].get("engine")
        if not plan:
            raise BadInputError("--record-engine: not a TensorRT bundle")
        print(strict_json.dumps(write_record(args.bundle, plan)))
    if (args.build_engine or args.record_engine) and not (args.input or args.benchmark or args.output):
        return 0
    specs = manifest["inputs"]
    if "tflite" in manifest["backend"]:
        io = manifest["backend"]["tflite"]["io"]
        device = {entry["name"]: entry["model_shape"] for entry in io["inputs"]}
        specs = [{**spec, "device_shape": device.get(spec["name"])} for spec in specs]
    feed = read_feed(args.input, specs, args.seed)
    if args.benchmark:
        options = BenchmarkOptions(
            runs=args.runs, warmup=args.warmup, min_duration=args.min_duration, threads=args.threads,
            layers=args.layers, energy=args.energy, energy_root=args.energy_root,
            energy_seconds=args.energy_seconds, energy_idle_seconds=args.energy_idle_seconds)
        _print_result(benchmark(args.bundle, manifest, feed, options, key), args.json)
    else:
        _print_result(run_once(args.bundle, manifest, feed, args.threads, key, args.output, args.input),
                      args.json)
    return 0


def main(argv: list[str] | None = None, default_bundle: Path | None = None) -> int:
    sys.dont_write_bytecode = True  # a __pycache__ in a bundle would be a file its manifest does not list
    args = parse_args(sys.argv[1:] if argv is None else argv, default_bundle)
    try:
        return _main(args)
    except EdgepipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug here, or a runtime failing in a way not foreseen: one line
        if args.debug:
            raise
        print(f"error: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug for the "
              "traceback)", file=sys.stderr)
        return 3
