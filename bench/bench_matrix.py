"""Wall time of an 8-cell build matrix: a serial for-loop of `edgepipe build` (what a release
pipeline writes by hand) vs `edgepipe matrix` with an empty cache vs `edgepipe matrix` again
(every cell a cache hit). Each candidate runs as its own process, rounds interleaved; the
cold matrix gets a fresh cache every round.

    python bench/bench_matrix.py --rounds 2      # writes bench/results/matrix.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, write_report

MODELS = {"digits": f"{ROOT / 'examples/models/digits_cnn.py'}:digits_cnn",
          "resnet18": f"{ROOT / 'examples/models/resnet.py'}:resnet18"}
TARGETS = ("onnxruntime-cpu", "openvino-cpu")
PROFILES = ("fp32", "int8")


def _calibration(folder: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    paths = {"digits": folder / "digits.npz", "resnet18": folder / "resnet18.npz"}
    np.savez(paths["digits"], input=rng.standard_normal((32, 1, 8, 8)).astype(np.float32))
    np.savez(paths["resnet18"], input=rng.standard_normal((16, 3, 224, 224)).astype(np.float32))
    return paths


def _matrix_file(folder: Path, calib: dict[str, Path]) -> Path:
    lines = [f"targets = {json.dumps(list(TARGETS))}", f"profiles = {json.dumps(list(PROFILES))}",
             'cache = "cache"']
    for name, model in MODELS.items():
        lines += ["", "[[models]]", f'name = "{name}"', f'model = "{model}"', f'calib = "{calib[name]}"']
    path = folder / "matrix.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=None, help="matrix --jobs (default: all CPUs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "matrix.json")
    args = parser.parse_args()
    edgepipe = [sys.executable, "-m", "edgepipe"]
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    times: dict[str, list[float]] = {"serial_loop": [], "matrix_cold": [], "matrix_warm": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        calib = _calibration(folder)
        matrix = _matrix_file(folder, calib)
        for round_index in range(args.rounds):
            loop_seconds = 0.0
            for name, model in MODELS.items():
                for target in TARGETS:
                    for profile in PROFILES:
                        out = folder / "loop" / f"{name}-{target}-{profile}"
                        loop_seconds += _timed([*edgepipe, "build", model, "--target", target, "--profile",
                                                profile, "--calib", str(calib[name]), "--out", str(out),
                                                "--force"])
            times["serial_loop"].append(loop_seconds)
            shutil.rmtree(folder / "cache", ignore_errors=True)
            results = folder / f"results-{round_index}"
            run_matrix = [*edgepipe, "matrix", str(matrix), "--out", str(results), *jobs]
            times["matrix_cold"].append(_timed(run_matrix))
            times["matrix_warm"].append(_timed(run_matrix))
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()))
    medians = {key: round(statistics.median(values), 2) for key, values in times.items()}
    ratios = {"matrix_cold_vs_loop": round(medians["matrix_cold"] / medians["serial_loop"], 3),
              "matrix_warm_vs_loop": round(medians["matrix_warm"] / medians["serial_loop"], 3)}
    write_report(args.out, "matrix", {"rounds": args.rounds, "cells": 8, "jobs": args.jobs or "all CPUs",
                                      "models": list(MODELS), "targets": list(TARGETS),
                                      "profiles": list(PROFILES)},
                 {"wall_seconds": medians, "per_round": times, "ratios": ratios})
    print(json.dumps({"wall_seconds": medians, "ratios": ratios}))


if __name__ == "__main__":
    main()
