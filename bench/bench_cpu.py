"""CPU benchmark: edgepipe bundles against what a user would otherwise run, in one run.

For each model, three candidates, each timed in its own process, in interleaved
rounds (A B C, A B C, ...), medians over rounds (DESIGN.md section 7):

- torch-eager:     the PyTorch model itself, inference mode;
- onnxruntime:     torch.onnx.export's model in a default ONNX Runtime session (by hand);
- edgepipe:        the bundle, timed by its own run.py as on the device.

Writes JSON (default bench/results/cpu.json) and prints ratios. Never run by the tests.

    python bench/bench_cpu.py --threads 2 --rounds 5 --runs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_timing_options, machine, run_worker

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet18": "examples/models/resnet.py:resnet18",
    "mobilenet_v2": "examples/models/mobilenet_v2.py:mobilenet_v2",
    "minilm": "examples/models/transformer.py:minilm",
}


def _candidates(name: str, bundle: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    common = ["--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    workers = str(ROOT / "bench" / "workers.py")
    return {
        "torch-eager": [sys.executable, workers, "torch", str(ROOT / MODELS[name]), *common],
        "onnxruntime": [sys.executable, workers, "ort", str(bundle.with_name(bundle.name + ".build")
                                                            / "00-export.onnx"), *common],
        "edgepipe": [sys.executable, str(bundle / "run.py"), "--benchmark", "--json", *common],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_timing_options(parser, rounds=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu.json")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from edgepipe import api

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            bundle = Path(work) / f"{name}-cpu"
            api.build(str(ROOT / MODELS[name]), target="onnxruntime-cpu", out=bundle)
            candidates = _candidates(name, bundle, args)
            rounds: dict[str, list[float]] = {c: [] for c in candidates}
            samples: dict[str, list[float]] = {c: [] for c in candidates}
            cold: dict[str, list[float]] = {"onnxruntime": [], "edgepipe": []}
            for _ in range(args.rounds):
                for candidate, command in candidates.items():
                    result = run_worker(command)
                    rounds[candidate].append(statistics.median(result["latencies_ms"]))
                    samples[candidate].extend(result["latencies_ms"])
                    if candidate in cold:
                        cold[candidate].append(result["load_ms"] + result["first_inference_ms"])
            medians = {c: statistics.median(r) for c, r in rounds.items()}
            cold_medians = {c: statistics.median(v) for c, v in cold.items()}
            results[name] = {
                "median_ms": medians,
                "round_medians_ms": rounds,
                "p90_ms": {c: statistics.quantiles(s, n=10)[-1] for c, s in samples.items()},
                "cold_start_ms": cold_medians,
                "cold_start_speedup_vs_onnxruntime": cold_medians["onnxruntime"]
                / cold_medians["edgepipe"],
                "speedup_vs_torch_eager": medians["torch-eager"] / medians["edgepipe"],
                "speedup_vs_onnxruntime": medians["onnxruntime"] / medians["edgepipe"],
            }
            print(f"{name:13s} torch {medians['torch-eager']:7.2f} ms  ort {medians['onnxruntime']:7.2f}"
                  f" ms  edgepipe {medians['edgepipe']:7.2f} ms  -> "
                  f"{results[name]['speedup_vs_torch_eager']:.2f}x vs torch, "
                  f"{results[name]['speedup_vs_onnxruntime']:.2f}x vs plain ORT; cold start ort "
                  f"{cold_medians['onnxruntime']:.0f} ms, edgepipe {cold_medians['edgepipe']:.0f} ms",
                  flush=True)
    report = {
        "benchmark": "cpu-latency",
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "machine": machine(),
        "settings": {"threads": args.threads, "rounds": args.rounds, "runs": args.runs,
                     "warmup": args.warmup, "batch": 1,
                     "method": "each candidate in its own process, interleaved rounds, "
                               "median of round medians"},
        "models": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
