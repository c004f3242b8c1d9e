"""Third-party ONNX files (models.toml): where they are, and one check used by both the slow test
and bench/third_party.py, so the README table and the test judge alike.

The check is what a user does: `edgepipe build FILE --target T --profile fp32` in its own
process (exit code and one-line error as a user sees them), then the bundle's own runner
against ONNX Runtime on the original file, on the same seeded inputs the bundle's run.py
would draw (declared values included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
STORE = ROOT / ".third-party"
MODELS = Path(__file__).with_name("models.toml")
# "Outputs within 1e-3 relative of ONNX Runtime on the original file": max |Δ| over the largest
# magnitude of that output, so near-zero elements do not turn float noise into failures; the
# magnitude is floored at 1e-3 (a detector's probability map on random input peaks near 3e-5,
# where a rounding difference of 2e-7 would otherwise count as 0.6 %).
RELATIVE_TOLERANCE = 1e-3
SCALE_FLOOR = 1e-3


@dataclass(frozen=True)
class Model:
    file: str
    task: str
    inputs: tuple[str, ...]

    @property
    def path(self) -> Path:
        if self.file.startswith("onnx:"):
            import onnx

            return Path(onnx.__file__).parent / "backend/test/data/light" / self.file.removeprefix("onnx:")
        return STORE / self.file

    @property
    def label(self) -> str:
        return self.file.removeprefix("onnx:")


def catalogue() -> dict[str, Any]:
    return tomllib.loads(MODELS.read_text())


def models() -> list[Model]:
    return [Model(m["file"], m["task"], tuple(m.get("inputs", ()))) for m in catalogue()["model"]]


def missing() -> list[str]:
    return [m.label for m in models() if not m.path.is_file()]


def relative_error(reference: np.ndarray, value: np.ndarray) -> float:
    reference, value = np.asarray(reference, np.float64), np.asarray(value, np.float64)
    if reference.shape != value.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(reference))), SCALE_FLOOR)
    return float(np.max(np.abs(reference - value))) / scale


def check(model: Model, target: str, out: Path, seed: int = 7) -> dict[str, Any]:
    """Build `model` for `target` and compare the bundle with ONNX Runtime on the original."""
    from edgepipe.runtime.bundle import load_manifest
    from edgepipe.runtime.feeds import random_inputs
    from edgepipe.runtime.runners import make_runner, open_runner

    command = [sys.executable, "-m", "edgepipe", "build", str(model.path), "--target", target,
               "--profile", "fp32", "--out", str(out), "--force", "--json"]
    for spec in model.inputs:
        command += ["--input", spec]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    row: dict[str, Any] = {"model": model.label, "target": target, "exit": done.returncode}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        # Progress and warning lines are edgepipe's; anything else (a runtime's own log record,
        # a traceback) is noise the user should not see.
        stray = [line for line in lines[:-1] if not line.startswith(("✓", "✗", "  "))]
        row.update(status="refused", message=lines[-1] if lines else "", stray_lines=stray,
                   written=out.exists())
        return row
    summary = json.loads(done.stdout)
    manifest = load_manifest(out)
    feed = random_inputs(manifest["inputs"], seed)
    original_specs = [{**spec, "shape": list(feed[spec["name"]].shape)} for spec in manifest["inputs"]]
    with make_runner("onnxruntime", model.path, inputs=original_specs, outputs=[],
                     settings=_exact_ort_settings()) as runner:
        expected = runner.infer(feed)
    with open_runner(out, manifest) as runner:
        actual = runner.infer(feed)
    errors = {name: relative_error(value, actual[name]) for name, value in expected.items() if name in actual}
    row.update(status="built", stages=[s["stage"] for s in summary.get("stages", [])],
               missing_outputs=sorted(set(expected) - set(actual)),
               max_relative_error=max(errors.values(), default=0.0), errors=errors)
    return row


def _exact_ort_settings() -> dict[str, Any]:
    return {"graph_optimization_level": "disabled", "threads": 1, "inter_op_threads": 1,
            "execution_mode": "sequential", "providers": ["CPUExecutionProvider"]}
