"""Bundle sizes per target and profile for the examples: the flashable folder (what a device
stores), the backend artifact, and what the folder weighed when it also carried the portable
model.onnx (before it moved to <bundle>.build/ for non-TensorRT targets).

Sizes only: int8 is calibrated on random data with a budget that accepts anything, so every
cell builds; accuracy is measured by bench_int8.py and bench_openvino.py. Writes
bench/results/sizes.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, write_report

MODELS = {"digits_cnn": "examples/models/digits_cnn.py:digits_cnn",
          "resnet18": "examples/models/resnet.py:resnet18",
          "mobilenet_v2": "examples/models/mobilenet_v2.py:mobilenet_v2"}
CELLS = [("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "int8"), ("openvino-cpu", "fp32"),
         ("openvino-cpu", "bf16"), ("openvino-cpu", "int8"), ("jetson", "fp16"), ("jetson", "int8"),
         ("mobile", "fp32"), ("mobile", "int8")]
SIZE_ONLY_INT8 = """name = "int8-size-only"
description = "int8 for measuring sizes: any accuracy accepted"
extends = "int8"
[quantize.budget]
on_exceed = "fail"
min_cosine = -1.0
max_top1_drop = 100.0
"""


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sizes.json")
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as scratch:
        profile = Path(scratch) / "int8-size-only.toml"
        profile.write_text(SIZE_ONLY_INT8)
        for model in args.models:
            rows = []
            for target, precision in CELLS:
                out = Path(scratch) / f"{model}-{target}-{precision}"
                chosen = {"int8": [str(profile), "--calib", "random"], "fp32": ["fp32"]}.get(
                    precision, [precision])
                done = subprocess.run([sys.executable, "-m", "edgepipe", "build", MODELS[model], "--target",
                                       target, "--profile", *chosen, "--out", str(out), "--json"],
                                      capture_output=True, text=True, cwd=ROOT, check=False)
                if done.returncode != 0:
                    rows.append({"target": target, "profile": precision, "error": done.stderr.strip()[-300:]})
                    print(f"{model} {target} {precision}: failed", file=sys.stderr)
                    continue
                import json

                manifest = json.loads((out / "manifest.json").read_text())
                portable = out.with_name(out.name + ".build") / "model.onnx"
                bundle = folder_bytes(out)
                artifact = (out / manifest["backend"]["artifact"])
                artifact_bytes = artifact.stat().st_size + sum(
                    p.stat().st_size for p in out.glob(artifact.stem + ".bin"))
                rows.append({"target": target, "profile": precision, "bundle_bytes": bundle,
                             "artifact": manifest["backend"]["artifact"], "artifact_bytes": artifact_bytes,
                             "portable_in_bundle": manifest["portable_model"] is not None,
                             "bundle_with_portable_bytes": bundle if manifest["portable_model"]
                             else bundle + portable.stat().st_size})
                print(f"{model} {target} {precision}: {bundle / 2**20:.2f} MiB", file=sys.stderr)
            results[model] = rows
    write_report(args.out, "bundle sizes", {"int8": "random calibration, accuracy not gated (sizes only)"},
                 results)


if __name__ == "__main__":
    main()
