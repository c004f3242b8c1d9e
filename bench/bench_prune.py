"""Structured pruning benchmark: ResNet-18 at 0 / 30 / 50 % of channels, on ONNX Runtime and OpenVINO.

Each model is built by `edgepipe build --profile pruned` (ratio from --prune-ratio,
no fine-tuning: speed depends on the shapes, not the weights; the example's
weights are random) or `--profile fp32` for the unpruned baseline, once per
target; each bundle is timed by its own run.py in its own process, interleaved
rounds, medians, same threads (DESIGN.md section 7). MACs and parameters come
from the prune stage's report.

    python bench/bench_prune.py --threads 2 --rounds 3 --runs 30
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, add_timing_options, time_interleaved, write_report

MODEL = "examples/models/resnet.py:resnet18"
TARGETS = {"ort": "onnxruntime-cpu", "openvino": "openvino-cpu"}
NO_FINETUNE = """name = "pruned-bench"
description = "structure only: no fine-tuning, no accuracy gate (random weights)"
extends = "pruned"
[prune.finetune]
epochs = 0
[prune.budget]
min_cosine = -1.0
"""


def _build(work: Path, target: str, ratio: float) -> tuple[Path, dict]:
    out = work / f"{target}-{ratio:g}"
    command = [sys.executable, "-m", "edgepipe", "build", MODEL, "--target", target, "--out", str(out)]
    if ratio:
        profile = work / "pruned-bench.toml"
        profile.write_text(NO_FINETUNE)
        command += ["--profile", str(profile), "--prune-ratio", str(ratio)]
    else:
        command += ["--profile", "fp32"]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    manifest = json.loads((out / "manifest.json").read_text())
    prune = next((s["metrics"] for s in manifest["stages"] if s["stage"] == "prune"), None)
    return out, ({"macs": prune["steps"][-1]["macs"], "params": prune["steps"][-1]["params"],
                  "unpruned_macs": prune["steps"][0]["macs"]} if prune else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    add_timing_options(parser)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prune.json")
    args = parser.parse_args()
    timing = ["--benchmark", "--json", "--threads", str(args.threads), "--runs", str(args.runs),
              "--warmup", str(args.warmup)]
    ratios = [0.0, *args.ratios]
    with tempfile.TemporaryDirectory() as work_dir:
        work = Path(work_dir)
        candidates, costs = {}, {}
        for runtime, target in TARGETS.items():
            for ratio in ratios:
                bundle, cost = _build(work, target, ratio)
                key = f"{runtime}-{ratio:g}"
                candidates[key] = [sys.executable, str(bundle / "run.py"), *timing]
                costs[ratio] = cost or costs.get(ratio, {})
        median = time_interleaved(candidates, args.rounds)
    unpruned_macs = next(c["unpruned_macs"] for c in costs.values() if c)
    results = {}
    for runtime in TARGETS:
        base = median[f"{runtime}-0"]
        results[runtime] = {f"{ratio:g}": {
            "median_ms": median[f"{runtime}-{ratio:g}"],
            "latency_ratio_vs_unpruned": median[f"{runtime}-{ratio:g}"] / base,
            "macs": costs[ratio].get("macs", unpruned_macs),
            "macs_ratio": costs[ratio].get("macs", unpruned_macs) / unpruned_macs,
        } for ratio in ratios}
        rows = [f"{r} {v['median_ms']:.2f} ms (x{v['latency_ratio_vs_unpruned']:.2f}, "
                f"MACs x{v['macs_ratio']:.2f})" for r, v in results[runtime].items()]
        print(f"{runtime}: " + "  ".join(rows), flush=True)
    write_report(args.out, "prune-resnet18", {
        "threads": args.threads, "rounds": args.rounds, "runs": args.runs, "warmup": args.warmup,
        "batch": 1, "ratios": ratios, "round_to": 8, "importance": "l1", "keep_first_last": True},
        {"resnet18": results})


if __name__ == "__main__":
    main()
