"""The third-party corpus (tests/third_party/models.toml) on the CPU targets: every model built
in fp32 by `edgepipe build` in its own process and its bundle compared with ONNX Runtime on the
original file, or the one-line refusal it got. Writes bench/results/third_party.json and prints
the Markdown table the README carries. Run `make third-party` first to fetch the files."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ROOT, write_report
from tests.third_party import RELATIVE_TOLERANCE, check, models

TARGETS = ("onnxruntime-cpu", "openvino-cpu")


def faithful(row: dict) -> bool:
    return (row["status"] == "built" and not row["missing_outputs"]
            and row["max_relative_error"] <= RELATIVE_TOLERANCE)


def real(row: dict) -> bool:
    return "constant weights" not in row["task"]  # onnx's light test models (models.toml)


def cell(row: dict) -> str:
    if row["status"] == "built":
        mark = "✓" if faithful(row) else "✗"
        return f"{mark} {row['max_relative_error']:.1e} ({row['seconds']:.0f} s)"
    if row["status"] == "missing":
        return "not fetched"
    return f"refused, exit {row['exit']}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/third_party.json")
    parser.add_argument("--only", nargs="*", default=[], help="substrings of model files to keep")
    args = parser.parse_args()
    rows: dict[str, dict[str, dict]] = {}
    for model in models():
        if args.only and not any(part in model.label for part in args.only):
            continue
        rows[model.label] = {"task": model.task, "inputs": list(model.inputs)}
        for target in TARGETS:
            if not model.path.is_file():
                rows[model.label][target] = {"status": "missing"}
                continue
            with tempfile.TemporaryDirectory() as scratch:
                started = time.perf_counter()
                row = check(model, target, Path(scratch) / "bundle")
                row["seconds"] = round(time.perf_counter() - started, 1)
            row.pop("model"), row.pop("target")
            rows[model.label][target] = row
            print(f"{model.label} {target}: {cell(row)} {row.get('message', '')}", flush=True)
    summary = {target: {"models": len(rows),
                        "built_within_tolerance": sum(1 for r in rows.values() if faithful(r[target])),
                        "real_weights": sum(1 for r in rows.values() if real(r)),
                        "real_weights_built_within_tolerance": sum(
                            1 for r in rows.values() if faithful(r[target]) and real(r)),
                        "refused": sum(1 for r in rows.values() if r[target]["status"] == "refused")}
               for target in TARGETS}
    write_report(args.out, "third_party", {"profile": "fp32", "relative_tolerance": RELATIVE_TOLERANCE,
                                           "summary": summary}, rows)
    print("\n| model | task | " + " | ".join(TARGETS) + " |\n|---|---|" + "---|" * len(TARGETS))
    for label, row in rows.items():
        print(f"| `{label.rsplit('/', 1)[-1]}` | {row['task']} | "
              + " | ".join(cell(row[target]) for target in TARGETS) + " |")
    for target, counts in summary.items():
        print(f"{target}: {counts['built_within_tolerance']}/{counts['models']} built within "
              f"{RELATIVE_TOLERANCE:g} ({counts['real_weights_built_within_tolerance']}/"
              f"{counts['real_weights']} with real weights), {counts['refused']} refused")


if __name__ == "__main__":
    main()
