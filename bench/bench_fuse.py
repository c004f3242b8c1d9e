"""What the fuse stage buys: node counts, and ONNX Runtime latency before/after, in one run.

Sources are exported the way other tools leave models (BatchNorm not folded; LayerNorm
written out), then built by edgepipe; `00-export.onnx` (before) and `01-fuse.onnx`
(after) are timed, each in its own process, in interleaved rounds, at two ONNX Runtime
levels: `all` (what ORT users get: ORT re-does most of this at load, so expect ~1.0x)
and `disabled` (a stand-in for runtimes with no graph optimizer of their own).

    python bench/bench_fuse.py --threads 2 --rounds 5 --runs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_timing_options

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "resnet18": ("examples/models/resnet.py", "resnet18"),
    "mobilenet_v2": ("examples/models/mobilenet_v2.py", "mobilenet_v2"),
    "minilm_written_out": ("examples/models/transformer.py", "minilm_written_out"),
}


def _source_onnx(name: str, folder: Path) -> Path:
    """Export without torch's own folding, as a model from another tool arrives."""
    import importlib.util

    import torch

    file, factory = MODELS[name]
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model, examples = getattr(module, factory)()
    path = folder / f"{name}.onnx"
    torch.onnx.export(model.eval(), tuple(examples.values()), str(path), dynamo=False,
                      opset_version=17, input_names=list(examples), output_names=["output"],
                      do_constant_folding=False)
    return path


def _nodes(path: Path) -> Counter[str]:
    import onnx

    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _time(path: Path, level: str, args: argparse.Namespace) -> float:
    command = [sys.executable, str(ROOT / "bench" / "workers.py"), "ort", str(path), "--level", level,
               "--threads", str(args.threads), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"worker failed: {done.stderr[-2000:]}")
    return statistics.median(json.loads(done.stdout.strip().splitlines()[-1])["latencies_ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    add_timing_options(parser, rounds=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fuse.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from edgepipe import api

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.models:
            source = _source_onnx(name, Path(work))
            bundle = Path(work) / f"{name}-cpu"
            api.build(str(source), target="onnxruntime-cpu", out=bundle)
            build = bundle.with_name(bundle.name + ".build")
            before, after = build / "00-export.onnx", build / "01-fuse.onnx"
            candidates = {(stage, level): path for stage, path in (("before", before), ("after", after))
                          for level in ("all", "disabled")}
            rounds: dict[tuple[str, str], list[float]] = {key: [] for key in candidates}
            for _ in range(args.rounds):
                for key, path in candidates.items():
                    rounds[key].append(_time(path, key[1], args))
            medians = {key: statistics.median(values) for key, values in rounds.items()}
            nodes_before, nodes_after = _nodes(before), _nodes(after)
            results[name] = {
                "nodes": {"before": sum(nodes_before.values()), "after": sum(nodes_after.values())},
                "op_change": {op: nodes_after[op] - nodes_before[op]
                              for op in sorted(set(nodes_before) | set(nodes_after))
                              if nodes_after[op] != nodes_before[op]},
                "median_ms": {f"{stage}-{level}": value for (stage, level), value in medians.items()},
                "speedup_ort_all": medians[("before", "all")] / medians[("after", "all")],
                "speedup_ort_disabled": medians[("before", "disabled")] / medians[("after", "disabled")],
            }
            r = results[name]
            print(f"{name:19s} nodes {r['nodes']['before']:4d} -> {r['nodes']['after']:4d}   "
                  f"ORT all {medians[('before', 'all')]:6.2f} -> {medians[('after', 'all')]:6.2f} ms "
                  f"({r['speedup_ort_all']:.2f}x)   ORT no-opt {medians[('before', 'disabled')]:6.2f} -> "
                  f"{medians[('after', 'disabled')]:6.2f} ms ({r['speedup_ort_disabled']:.2f}x)", flush=True)
    report = {"benchmark": "fuse", "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
              "settings": {"threads": args.threads, "rounds": args.rounds, "runs": args.runs,
                           "warmup": args.warmup, "batch": 1},
              "models": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
