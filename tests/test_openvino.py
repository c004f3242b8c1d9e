"""The OpenVINO backend: IR bundles in fp32 and int8, precision recorded, run.py standalone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import (
    DIGITS,
    EXAMPLES,
    MINILM_TINY,
    RESNET18,
    assert_one_line_error,
    portable_of,
    run_edgepipe,
)
from tests.test_run_py import run_on_device

pytest.importorskip("openvino", reason="the [openvino] extra is not installed")

MOBILENET = f"{EXAMPLES / 'mobilenet_v2.py'}:mobilenet_v2"


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("model", [DIGITS, RESNET18, MOBILENET, MINILM_TINY],
                         ids=["digits", "resnet18", "mobilenet_v2", "minilm_tiny"])
def test_fp32_ir_matches_the_source(cli, tmp_path, model):
    out = tmp_path / "b"
    result = cli("build", model, "--target", "openvino-cpu", "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = _manifest(out)
    assert manifest["backend"]["name"] == "openvino" and manifest["backend"]["artifact"] == "model.xml"
    assert {"model.xml", "model.bin", "run.py"} <= {f["path"] for f in manifest["files"]}
    assert "model.onnx" not in {f["path"] for f in manifest["files"]}  # the device runs the IR only
    assert manifest["parity"]["min_cosine"] >= 0.999
    # What ran, not only what was asked: f32, explicitly.
    assert manifest["backend"]["precision"] == "f32"
    from edgepipe.manifest import full_manifest

    assert full_manifest(out)["backend"]["runtime_reports"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_fp32_weights_stay_fp32_in_the_ir(cli, tmp_path):
    """ov.save_model compresses to fp16 by default; an f32 build must not."""
    import openvino as ov

    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "x86", "--out", out).exit_code == 0
    model = ov.Core().read_model(str(out / "model.xml"))
    constants = [op for op in model.get_ops() if op.get_type_name() == "Constant"]
    assert not [c for c in constants if c.get_element_type().get_type_name() == "f16"]


def test_digits_int8_within_one_point(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", "openvino-cpu",
                 "--profile", "int8", "--calib", trained_digits["test"], "--eval", trained_digits["test"],
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = _manifest(out)
    metrics = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]
    evaluation = metrics["evaluation"]
    assert metrics["engine"] == "nncf"  # the openvino targets' default
    assert evaluation["float"]["top1"] - evaluation["int8"]["top1"] <= 1.0
    assert evaluation["int8"]["mean_cosine"] > 0.995
    import openvino as ov

    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "model.xml")).get_ops()}
    assert "FakeQuantize" in ops  # OpenVINO's own form of the QDQ pairs


def test_run_py_runs_the_ir_without_edgepipe(cli, tmp_path):
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "openvino-cpu", "--out", out).exit_code == 0
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    done = run_on_device(out, "--verify", "--benchmark", "--runs", "5", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runtime"]["name"] == "openvino" and result["runtime"]["precision"] == "f32"
    assert len(result["latencies_ms"]) == 5
    once = run_on_device(out, "--input", tmp_path / "x.npy", "--json")
    assert once.returncode == 0 and json.loads(once.stdout)["output"]["shape"] == [1, 10]


def test_profile_runs_an_openvino_bundle(cli, tmp_path):
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "x86", "--out", out).exit_code == 0
    result = cli("profile", out, "--runs", "5", "--warmup", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["runtime"]["name"] == "openvino"


def test_fp16_and_bf16_are_refused_by_onnxruntime_and_named(cli, tmp_path):
    profile = tmp_path / "fp16.toml"
    profile.write_text('name = "fp16"\ndescription = "half"\nextends = "fp32"\n[lower]\nprecision = "f16"\n')
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--profile", profile,
                 "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "precision 'f16' is not available on backend onnxruntime" in result.stderr.splitlines()[-1]


def test_missing_openvino_exits_3_naming_the_extra(tmp_path):
    blocker = tmp_path / "blocker" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'openvino'\", name='openvino')\n")
    done = run_edgepipe("build", DIGITS, "--target", "openvino-cpu", "--out", tmp_path / "b",
                        env={"PYTHONPATH": str(tmp_path / "blocker")})
    assert done.returncode == 3, done.stderr
    assert_one_line_error(done.stderr, "pip install 'edgepipe[openvino]'")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_run_py_in_a_fresh_venv_with_only_numpy_and_openvino(cli, tmp_path):
    import openvino

    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "openvino-cpu", "--out", out).exit_code == 0
    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    version = openvino.__version__.split("-")[0]
    install = subprocess.run([python, "-m", "pip", "install", "-q", "numpy", f"openvino=={version}"],
                             capture_output=True, text=True, check=False, timeout=900)
    assert install.returncode == 0, install.stderr[-2000:]
    result = subprocess.run([python, str(out / "run.py"), "--verify", "--benchmark", "--runs", "5",
                             "--json"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runtime"]["name"] == "openvino"


@pytest.mark.parametrize("device", ["GPU", "NPU"])
def test_absent_devices_exit_3_naming_them(cli, tmp_path, device):
    import openvino as ov

    if device in ov.Core().available_devices:
        pytest.skip(f"this machine has an OpenVINO {device}")
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", f"openvino-{device.lower()}", "--out", out)
    assert result.exit_code == 3
    assert f"OpenVINO device {device} is not present" in result.stderr.splitlines()[-1]
    assert not out.exists()


def test_the_other_int8_engine_stays_selectable(cli, tmp_path, trained_digits):
    profile = tmp_path / "ort-engine.toml"
    profile.write_text('name = "e"\ndescription = "int8 by onnxruntime.quantization"\nextends = "int8"\n'
                       '[quantize]\nengine = "onnxruntime"\n')
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", "openvino-cpu",
                 "--profile", profile, "--calib", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = next(s for s in _manifest(out)["stages"] if s["stage"] == "quantize")["metrics"]
    assert metrics["engine"] == "onnxruntime" and metrics["scheme"] == "static"


@pytest.mark.parametrize("model", [RESNET18, f"{MOBILENET}_imagenet", MINILM_TINY],
                         ids=["resnet18", "mobilenet_v2", "minilm_tiny"])
def test_int8_ir_of_each_example(cli, tmp_path, model):
    import openvino as ov

    profile = tmp_path / "int8-short.toml"
    profile.write_text('name = "int8-short"\ndescription = "int8, fewer samples"\nextends = "int8"\n'
                       "[quantize]\ncalib_count = 32\neval_count = 16\n")
    out = tmp_path / "b"
    result = cli("build", model, "--min-speedup", "0",
                 "--target", "openvino-cpu", "--profile", profile, "--calib", "random",
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = next(s for s in _manifest(out)["stages"] if s["stage"] == "quantize")["metrics"]
    assert metrics["engine"] == "nncf"
    assert metrics["evaluation"]["int8"]["mean_cosine"] >= 0.99
    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "model.xml")).get_ops()}
    assert "FakeQuantize" in ops
    if model == MINILM_TINY:
        assert metrics["model_type"] == "transformer"


def _engine_profile(tmp_path: Path, engine: str, on_exceed: str = "fallback") -> Path:
    path = tmp_path / f"int8-{engine}.toml"
    path.write_text(f'name = "int8-{engine}"\ndescription = "int8 by {engine}"\nextends = "int8"\n'
                    f'[quantize]\nengine = "{engine}"\n[quantize.budget]\non_exceed = "{on_exceed}"\n')
    return path


def test_nncf_on_the_openvino_model_route(cli, tmp_path, trained_digits):
    import openvino as ov

    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", "openvino-cpu",
                 "--profile", _engine_profile(tmp_path, "nncf-openvino"), "--calib", trained_digits["test"],
                 "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = _manifest(out)
    quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")
    assert quantize["output"] == "02-quantize.xml" and quantize["metrics"]["engine"] == "nncf-openvino"
    evaluation = quantize["metrics"]["evaluation"]
    assert evaluation["float"]["top1"] - evaluation["int8"]["top1"] <= 1.0
    ops = {op.get_type_name() for op in ov.Core().read_model(str(out / "model.xml")).get_ops()}
    assert "FakeQuantize" in ops
    import onnx

    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(portable_of(out))).graph.node}


def test_nncf_accuracy_control_rescues_the_hostile_model(cli, tmp_path, trained_digits, hostile_onnx):
    out = tmp_path / "b"
    result = cli("build", hostile_onnx, "--target", "openvino-cpu", "--min-speedup", "0",
                 "--profile", _engine_profile(tmp_path, "nncf-openvino"), "--calib", trained_digits["test"],
                 "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = next(s for s in _manifest(out)["stages"] if s["stage"] == "quantize")["metrics"]
    evaluation = metrics["evaluation"]
    assert evaluation["float"]["top1"] - evaluation["int8_before_fallback"]["top1"] > 5
    assert evaluation["float"]["top1"] - evaluation["int8"]["top1"] <= 1.0
    assert metrics["fallback"][0]["tensor"] == "nncf.quantize_with_accuracy_control"
    failing = cli("build", hostile_onnx, "--target", "openvino-cpu",
                  "--profile", _engine_profile(tmp_path, "nncf-openvino", "fail"), "--calib",
                  trained_digits["test"], "--eval", trained_digits["test"], "--out", tmp_path / "c")
    assert failing.exit_code == 1 and not (tmp_path / "c").exists()


def test_nncf_openvino_engine_is_refused_for_other_backends(cli, tmp_path, trained_digits):
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu",
                 "--profile", _engine_profile(tmp_path, "nncf-openvino"), "--calib", trained_digits["test"],
                 "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert "writes an OpenVINO IR" in result.stderr.splitlines()[-1]


def test_int8_candidates_are_scored_as_the_ir_lowering_makes(tmp_path, digits_onnx):
    """A QDQ ONNX candidate runs through convert_model, as lowering converts it, not through
    OpenVINO's core ONNX reader, which reads some int8 graphs differently (nudenet's YOLOv8n:
    output cosine 0.984 against float by the reader, 0.9997 by convert_model)."""
    pytest.importorskip("openvino")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgepipe import onnx_model
    from edgepipe.artifact import Artifact
    from edgepipe.backends.openvino import OpenVinoBackend, OpenVinoLowerSettings, OpenVinoRuntimeSettings
    from edgepipe.quantization import ranges
    from edgepipe.quantization.qdq import write_qdq
    from edgepipe.quantization.scheme import Int8Scheme

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(digits_onnx), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    rng = np.random.default_rng(0)
    feeds = [{"input": rng.random((1, 1, 8, 8), np.float32)} for _ in range(16)]
    ranges.calibrate(prepared, feeds, tmp_path / "ranges.json", method="minmax", percentile=99.99,
                     symmetric=False)
    qdq = tmp_path / "int8.onnx"
    write_qdq(prepared, tmp_path / "ranges.json", qdq, scheme=Int8Scheme(), method="minmax", per_channel=True)
    model = onnx_model.load_plain(qdq)
    candidate = Artifact(qdq, "onnx", onnx_model.graph_inputs(model), onnx_model.graph_outputs(model))
    backend, runtime = OpenVinoBackend(), OpenVinoRuntimeSettings()
    with backend.candidate_runner(candidate, runtime) as run:
        scored = run.infer(feeds[0])
    assert (tmp_path / "int8.candidate.xml").is_file()  # converted beside the candidate
    (tmp_path / "ir").mkdir()
    lowered, _, _ = backend.lower(candidate, OpenVinoLowerSettings(), runtime, tmp_path / "ir")
    with backend.runner(lowered, runtime) as run:
        shipped = run.infer(feeds[0])
    for name, value in scored.items():
        np.testing.assert_array_equal(value, shipped[name])
