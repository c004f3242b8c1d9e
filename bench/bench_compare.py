"""How often `edgepipe compare` cries wolf, and how often it catches a real slowdown.

- False alarms: one bundle profiled N times (separate `edgepipe profile` invocations, each of the
  default rounds of fresh processes); every pair compared at the default threshold (5 %,
  alpha 0.01) by the round-level test and, beside it, by the old per-run test (all runs of a
  profile pooled as if independent), which is what a profile of one process amounts to.
- A/A runs: `compare --run` of the bundle against itself: the share judged a regression.
- Detection: `compare --run` of the bundle against the same network on a larger input
  (128x128 vs 144x144 pixels, +27 % of the work): the share judged a regression. `--run` is
  sequential (10 pairs a look, up to 3 looks at alpha/3 each), so each row records its pairs.

Writes bench/results/compare.json (with the CPU that produced it).

    python bench/bench_compare.py --profiles 12 --ab 20
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, write_report
from edgepipe.compare import decide, latency_rounds

FACTORY = """import sys
import torch
sys.path.insert(0, {root!r})
from examples.models.resnet import ResNet

def resnet18_at(side):
    torch.manual_seed(0)
    return ResNet((2, 2, 2, 2)).eval(), {{"input": torch.randn(1, 3, side, side)}}

def small():
    return resnet18_at(128)

def large():
    return resnet18_at(144)
"""


def edgepipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgepipe", *args], capture_output=True, text=True, cwd=ROOT,
                          check=False)


def build(out: Path, factory: str) -> Path:
    done = edgepipe("build", factory, "--target", "onnxruntime-cpu", "--out", str(out), "--force")
    if done.returncode != 0:
        sys.exit(f"build failed: {done.stderr[-1000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=12)
    parser.add_argument("--ab", type=int, default=20, help="A/B runs for detection (and half as many A/A)")
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compare.json")
    args = parser.parse_args()
    timing = ["--runs", str(args.runs), "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory() as scratch:
        models = Path(scratch) / "models.py"
        models.write_text(FACTORY.format(root=str(ROOT)))
        base = build(Path(scratch) / "a", f"{models}:small")
        larger = build(Path(scratch) / "b", f"{models}:large")
        profiles = []
        for index in range(args.profiles):
            path = Path(scratch) / f"p{index}.json"
            done = edgepipe("profile", str(base), *timing, "--out", str(path))
            if done.returncode != 0:
                sys.exit(f"profile failed: {done.stderr[-1000:]}")
            profiles.append(json.loads(path.read_text()))
            print(f"profile {index + 1}/{args.profiles}", file=sys.stderr)
        pairs = list(itertools.combinations(range(len(profiles)), 2))
        new_alarms = old_alarms = 0
        ratios = []
        for i, j in pairs:
            for a, b in ((profiles[i], profiles[j]), (profiles[j], profiles[i])):
                new = decide(latency_rounds(a), latency_rounds(b))
                old = decide(a["latency_ms"]["samples"], b["latency_ms"]["samples"])
                new_alarms += new.verdict == "regression"
                old_alarms += old.verdict == "regression"
                ratios.append(new.ratio)
        comparisons = 2 * len(pairs)

        def ab(old: Path, new: Path) -> dict:
            done = edgepipe("compare", "--run", str(old), str(new), *timing, "--json")
            if done.returncode not in (0, 1):
                sys.exit(f"compare --run failed: {done.stderr[-1000:]}")
            data = json.loads(done.stdout)
            sequential = data["sequential"]
            return {**data["decision"], "looks": sequential["looks"], "pairs": sequential["pairs"]}

        detections = []
        for index in range(args.ab):
            detections.append(ab(base, larger))
            print(f"A/B {index + 1}/{args.ab}: {detections[-1]['verdict']} ×{detections[-1]['ratio']:.3f}",
                  file=sys.stderr)
        same = []
        for index in range(max(1, args.ab // 2)):
            same.append(ab(base, base))
            print(f"A/A {index + 1}: {same[-1]['verdict']} ×{same[-1]['ratio']:.3f}", file=sys.stderr)
    medians = sorted(m for p in profiles for m in p["latency_ms"]["round_medians"])
    results = {
        "bundle": "ResNet-18 (random weights) at 1x3x128x128, onnxruntime-cpu",
        "profiles": args.profiles, "rounds_per_profile": len(profiles[0]["latency_ms"]["rounds"]),
        "round_medians_ms": {"min": medians[0], "max": medians[-1], "spread": medians[-1] / medians[0]},
        "false_alarms": {"comparisons": comparisons,
                         "round_level_test": new_alarms, "round_level_rate": new_alarms / comparisons,
                         "old_per_run_test": old_alarms, "old_per_run_rate": old_alarms / comparisons,
                         "ratio_range": [min(ratios), max(ratios)]},
        "a_a_runs": {"runs": len(same), "regressions": sum(d["verdict"] == "regression" for d in same),
                     "verdicts": [d["verdict"] for d in same], "pairs": [d["pairs"] for d in same]},
        "detection": {"slowdown": "1x3x144x144 vs 1x3x128x128 (+27 % pixels)", "runs": len(detections),
                      "detected": sum(d["verdict"] == "regression" for d in detections),
                      "rate": sum(d["verdict"] == "regression" for d in detections) / len(detections),
                      "ratios": [round(d["ratio"], 4) for d in detections],
                      "ci_low": [round(d["ci_low"], 4) for d in detections],
                      "pairs": [d["pairs"] for d in detections],
                      "verdicts": [d["verdict"] for d in detections]},
    }
    write_report(args.out, "compare: false alarms and detection",
                 {"threshold": "5 %", "alpha": 0.01, "runs": args.runs, "threads": args.threads}, results)
    print(json.dumps(results["false_alarms"]), json.dumps(results["detection"]["rate"]))


if __name__ == "__main__":
    main()
