"""The bundle's run.py: standalone (numpy + the runtime only), verifying, running, timing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import portable_of

# Runs run.py with edgepipe, torch and onnx made unimportable, as on a device.
_DEVICE_LIKE = textwrap.dedent("""
    import runpy, sys
    for name in ("edgepipe", "torch", "onnx", "onnx_ir", "onnxscript", "typer", "rich", "pydantic"):
        sys.modules[name] = None
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
""")


def run_on_device(bundle: Path, *args: str, python: str = sys.executable):
    return subprocess.run([python, "-c", _DEVICE_LIKE, str(bundle / "run.py"), *map(str, args)],
                          capture_output=True, text=True, check=False, timeout=300)


@pytest.fixture
def bundle_copy(digits_bundle, tmp_path) -> Path:
    copy = tmp_path / "flashed"
    shutil.copytree(digits_bundle, copy)
    return copy


def test_runs_inference_on_an_npz_input_without_edgepipe(bundle_copy, digits_bundle, tmp_path):
    from edgepipe.backends.onnxruntime import exact_runner
    from edgepipe.onnx_model import graph_inputs

    sample = np.random.default_rng(3).random((1, 1, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "in.npz", input=sample)
    result = run_on_device(bundle_copy, "--input", tmp_path / "in.npz",
                           "--output", tmp_path / "out.npz")
    assert result.returncode == 0, result.stderr
    got = np.load(tmp_path / "out.npz")["output"]
    import onnx

    portable = portable_of(digits_bundle)
    specs = graph_inputs(onnx.load(str(portable)))
    with exact_runner(portable, specs) as runner:
        expected = runner.infer({"input": sample})["output"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_benchmark_json(bundle_copy):
    result = run_on_device(bundle_copy, "--benchmark", "--runs", "7", "--warmup", "2",
                           "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["latencies_ms"]) == 7
    assert data["runtime"]["name"] == "onnxruntime"
    assert data["runtime"]["threads"] == 1
    assert data["load_ms"] > 0 and data["first_inference_ms"] > 0
    assert data["peak_rss_mb"] > 10


def test_verify_catches_tampering(bundle_copy):
    assert run_on_device(bundle_copy, "--verify").returncode == 0
    model = bundle_copy / "model.ort.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = run_on_device(bundle_copy, "--verify")
    assert result.returncode == 1
    assert "model.ort.onnx: sha256 differs from the manifest" in result.stderr


def test_wrong_input_shape_is_one_line(bundle_copy, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    result = run_on_device(bundle_copy, "--input", tmp_path / "bad.npy")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "the model expects float32 [1, 1, 8, 8]" in result.stderr


def test_edgepipe_verify_names_each_difference(cli, bundle_copy):
    assert cli("verify", bundle_copy).exit_code == 0
    (bundle_copy / "extra.bin").write_bytes(b"x")
    (bundle_copy / "report.md").write_text("edited")
    (bundle_copy / "run.py").unlink()
    result = cli("verify", bundle_copy, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["problems"]
    assert "run.py: missing" in problems
    assert any(p.startswith("report.md: size") for p in problems)
    assert "extra.bin: not listed in the manifest" in problems


@pytest.mark.slow
def test_runs_in_a_fresh_venv_with_only_numpy_and_onnxruntime(digits_bundle, tmp_path):
    """The device promise, for real: a new virtualenv with just the two packages."""
    import onnxruntime

    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "numpy", f"onnxruntime=={onnxruntime.__version__}"],
        capture_output=True, text=True, check=False, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True,
                            text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert not names & {"edgepipe", "torch", "onnx", "typer", "rich"}
    result = subprocess.run([python, str(digits_bundle / "run.py"), "--verify", "--benchmark",
                             "--runs", "5", "--json"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["latencies_ms"]) == 5
