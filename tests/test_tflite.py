"""TFLite/LiteRT targets, with the real converters (litert-torch, onnx2tf) and the real
LiteRT interpreter: parity with the float model, int8 accuracy on held-out digits from
both routes, the NHWC option, integer I/O, missing delegates, no network during a build,
and the bundle's run.py in a venv with nothing but numpy and ai-edge-litert."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepipe.errors import BackendError
from edgepipe.tflite.offline import network_blocked
from tests.conftest import DIGITS, EXAMPLES, ROOT, assert_one_line_error

pytest.importorskip("ai_edge_litert", reason="the [tflite] extra is not installed")
pytest.importorskip("litert_torch", reason="the [tflite] extra is not installed")
pytest.importorskip("onnx2tf", reason="onnx2tf is not installed (make installs it with --no-deps)")

MOBILENET = f"{EXAMPLES / 'mobilenet_v2.py'}:mobilenet_v2_imagenet"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def quantize_metrics(bundle: Path) -> dict:
    return next(s for s in manifest_of(bundle)["stages"] if s["stage"] == "quantize")["metrics"]


def plain_litert_top1(model: Path, test: Path, channel_last: bool = False) -> float:
    """Accuracy as a user's own LiteRT code gets it: the interpreter, the manifest's I/O record."""
    from ai_edge_litert.interpreter import Interpreter

    io = json.loads((model.parent / "manifest.json").read_text())["backend"]["tflite"]["io"]
    interpreter = Interpreter(str(model), num_threads=2)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    data = np.load(test)
    correct = 0
    for x, label in zip(data["input"], data["labels"], strict=True):
        x = x[None]
        if io["inputs"][0]["layout"] == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if io["inputs"][0]["quantization"]:
            scale, zero = io["inputs"][0]["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        correct += int(interpreter.get_tensor(out["index"]).argmax() == label)
    return 100.0 * correct / len(data["labels"])


@pytest.fixture(scope="module")
def digits_int8_torch(trained_digits, tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from edgepipe.cli import app

    out = tmp_path_factory.mktemp("tfl") / "digits-mobile-int8"
    args = ["build", DIGITS, "--weights", trained_digits["weights"], "--target", "mobile",
            "--profile", "int8", "--calib", trained_digits["train"], "--eval", trained_digits["test"],
            "--out", out]
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return out


def test_digits_fp32_from_pytorch_matches_the_source(cli, trained_digits, tmp_path):
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "mobile",
                 "--out", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(tmp_path / "b")
    assert manifest["backend"]["name"] == "tflite" and manifest["backend"]["artifact"] == "model.tflite"
    assert manifest["backend"]["tflite"]["converter"] == "litert-torch"
    assert manifest["parity"]["min_cosine"] >= 0.999
    assert manifest["backend"]["tflite"]["scheme"]["io"] == "float32"
    accuracy = plain_litert_top1(tmp_path / "b" / "model.tflite", trained_digits["test"])
    assert abs(accuracy - 100 * trained_digits["accuracy"]) < 0.01


def test_digits_int8_from_pytorch_within_one_point_in_plain_litert(digits_int8_torch, trained_digits):
    metrics = quantize_metrics(digits_int8_torch)
    assert metrics["engine"] == "litert"
    float_top1, int8_top1 = metrics["evaluation"]["float"]["top1"], metrics["evaluation"]["int8"]["top1"]
    assert float_top1 - int8_top1 <= 1.0
    tflite = manifest_of(digits_int8_torch)["backend"]["tflite"]
    assert tflite["converter"] == "litert-torch" and tflite["scheme"]["io"] == "int8"
    assert tflite["io"]["inputs"][0]["model_dtype"] == "int8"
    # What a plain interpreter gets is what the build reported.
    assert plain_litert_top1(digits_int8_torch / "model.tflite", trained_digits["test"]) == pytest.approx(
        int8_top1, abs=0.01)
    assert (digits_int8_torch / "model.tflite").stat().st_size < 0.5 * metrics["size_bytes"]["float"]


def test_onnx_source_goes_through_onnx2tf_without_the_network(cli, digits_trained_onnx, trained_digits,
                                                              tmp_path, monkeypatch):
    import onnx2tf.onnx2tf

    def no_downloads(*args, **kwargs):
        raise AssertionError("onnx2tf's own downloader was called")

    attempts = []
    real_connect = socket.socket.connect

    def record(self, address):
        attempts.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(onnx2tf.onnx2tf, "download_test_image_data", no_downloads)
    monkeypatch.setattr(socket.socket, "connect", record)
    result = cli("build", digits_trained_onnx, "--target", "mobile", "--profile", "int8",
                 "--calib", trained_digits["train"], "--eval", trained_digits["test"],
                 "--out", tmp_path / "b")
    assert result.exit_code == 0, result.stderr
    assert attempts == []
    tflite = manifest_of(tmp_path / "b")["backend"]["tflite"]
    assert tflite["converter"] == "onnx2tf" and tflite["scheme"]["io"] == "float32"
    assert tflite["io"]["inputs"][0]["model_dtype"] == "float32"
    metrics = quantize_metrics(tmp_path / "b")
    int8_top1 = metrics["evaluation"]["int8"]["top1"]
    assert metrics["evaluation"]["float"]["top1"] - int8_top1 <= 1.0
    assert plain_litert_top1(tmp_path / "b" / "model.tflite", trained_digits["test"]) == pytest.approx(
        int8_top1, abs=0.01)


def test_a_converter_that_reaches_for_the_network_fails_the_build():
    with network_blocked("onnx2tf"), pytest.raises(BackendError, match="tried to reach the network"):
        socket.create_connection(("127.0.0.1", 9))
    with socket.socket() as sock:  # restored afterwards
        assert sock.connect_ex(("127.0.0.1", 9)) != 0


def test_rgb_models_get_our_samples_instead_of_onnx2tfs_download(tmp_path, monkeypatch):
    """An RGB image input is exactly when onnx2tf downloads test images."""
    import onnx2tf.onnx2tf
    import torch

    from edgepipe.tflite.convert import convert_with_onnx2tf

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    path = tmp_path / "rgb.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["out"])
    monkeypatch.setattr(onnx2tf.onnx2tf, "download_test_image_data",
                        lambda: (_ for _ in ()).throw(AssertionError("downloader called")))
    calibration = {"image": np.random.default_rng(0).random((8, 3, 16, 16), dtype=np.float32)}
    out = tmp_path / "rgb.tflite"
    convert_with_onnx2tf(path, tmp_path / "work", out, precision="int8", io_dtype="float32",
                         channel_last=True, input_shapes={"image": (1, 3, 16, 16)}, calibration=calibration)
    assert out.stat().st_size > 0
    assert path.read_bytes() == (tmp_path / "rgb.onnx").read_bytes()  # the input was a copy


def test_channel_last_io_and_integer_io(cli, digits_trained_onnx, trained_digits, tmp_path):
    """channel_last_io: the model takes NHWC; int8_io uint8: integer I/O for NPUs/MCUs. run.py
    takes the manifest's NCHW tensor or an NHWC one and gives the same answer."""
    target = (ROOT / "targets" / "android-arm64.toml").read_text()
    target = (target.replace('name = "android-arm64"', 'name = "npu-phone"')
              .replace('aliases = ["mobile", "android"]', 'aliases = []')
              .replace("channel_last_io = false", "channel_last_io = true")
              .replace('int8_io = "float32"', 'int8_io = "uint8"'))
    (tmp_path / "npu-phone.toml").write_text(target)
    bundle = tmp_path / "b"
    result = cli("build", digits_trained_onnx, "--target", tmp_path / "npu-phone.toml", "--profile", "int8",
                 "--calib", trained_digits["train"], "--eval", trained_digits["test"], "--out", bundle)
    assert result.exit_code == 0, result.stderr
    io = manifest_of(bundle)["backend"]["tflite"]["io"]["inputs"][0]
    assert io["layout"] == "NHWC" and io["model_shape"] == [1, 8, 8, 1] and io["model_dtype"] == "uint8"
    sample = np.load(trained_digits["test"])["input"][:1]
    np.save(tmp_path / "nchw.npy", sample)
    np.save(tmp_path / "nhwc.npy", sample.transpose(0, 2, 3, 1))
    answers = []
    for name in ("nchw.npy", "nhwc.npy"):
        run = subprocess.run([sys.executable, bundle / "run.py", "--input", tmp_path / name, "--json",
                              "--output", tmp_path / f"{name}.npz"], capture_output=True, text=True,
                             check=False)
        assert run.returncode == 0, run.stderr
        answers.append(np.load(tmp_path / f"{name}.npz")["logits"])
    np.testing.assert_array_equal(answers[0], answers[1])


def test_missing_delegate_exits_3_naming_it(cli, tmp_path):
    target = (ROOT / "targets" / "android-arm64.toml").read_text()
    target = (target.replace('name = "android-arm64"', 'name = "gpu-phone"')
              .replace('aliases = ["mobile", "android"]', "aliases = []")
              .replace('delegate = "none"', 'delegate = "gpu"'))
    (tmp_path / "gpu-phone.toml").write_text(target)
    bundle = tmp_path / "b"
    result = cli("build", DIGITS, "--target", tmp_path / "gpu-phone.toml", "--out", bundle)
    assert result.exit_code == 0, result.stderr
    assert "gpu delegate is applied on the device only" in result.stderr
    run = subprocess.run([sys.executable, bundle / "run.py", "--benchmark", "--runs", "3"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 3
    assert_one_line_error(run.stderr, "gpu delegate", "libtensorflowlite_gpu_delegate.so")


def test_the_converter_follows_the_source():
    from edgepipe.errors import BadInputError
    from edgepipe.tflite.convert import choose_converter

    module = object()
    route = choose_converter("auto", "factory", module, ("export", "lower"), "f32")
    assert route.converter == "litert-torch"
    assert choose_converter("auto", "onnx", None, ("export", "lower"), "f32").converter == "onnx2tf"
    assert choose_converter("auto", "torchscript", module, ("export",), "f32").converter == "onnx2tf"
    # The prune stage's result is ONNX: converting the unpruned module would drop the pruning.
    assert choose_converter("auto", "factory", module, ("export", "prune"), "int8").converter == "onnx2tf"
    with pytest.raises(BadInputError, match="unpruned"):
        choose_converter("litert-torch", "factory", module, ("export", "prune"), "int8")
    with pytest.raises(BadInputError, match=r"nn\.Module"):
        choose_converter("litert-torch", "onnx", None, ("export",), "f32")


@pytest.mark.slow
def test_run_py_needs_only_numpy_and_ai_edge_litert(digits_int8_torch, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              "numpy", "ai-edge-litert"], capture_output=True, text=True, check=False)
    assert install.returncode == 0, install.stderr[-2000:]
    run = subprocess.run([python, digits_int8_torch / "run.py", "--benchmark", "--runs", "20", "--json"],
                         capture_output=True, text=True, check=False, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["runtime"]["name"] == "ai_edge_litert" and result["runs"] >= 20
    listed = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], capture_output=True,
                            text=True, check=True).stdout.lower()
    assert "torch" not in listed and "tensorflow" not in listed and "edgepipe" not in listed


@pytest.mark.slow
@pytest.mark.parametrize("source", ["pytorch", "onnx"])
def test_mobilenet_v2_for_mobile_fp32_and_int8(cli, tmp_path, source):
    """MobileNetV2 with its ImageNet weights, both routes: fp32 parity ≥ 0.999, int8 close."""
    import torch

    from tests.conftest import import_example

    model, examples = import_example("mobilenet_v2").mobilenet_v2_imagenet()
    spec = MOBILENET
    if source == "onnx":
        spec = tmp_path / "mobilenet_v2.onnx"
        torch.onnx.export(model.eval(), (examples["input"],), str(spec), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)  # smooth random "images" in the normalized range
    np.savez(calib, input=np.clip(rng.normal(0, 1, (16, 3, 224, 224)), -2.1, 2.6).astype(np.float32))
    fp32 = cli("build", spec, "--target", "mobile", "--out", tmp_path / "fp32")
    assert fp32.exit_code == 0, fp32.stderr
    assert manifest_of(tmp_path / "fp32")["parity"]["min_cosine"] >= 0.999
    int8 = cli("build", spec, "--target", "mobile", "--profile", "int8", "--calib", calib,
               "--out", tmp_path / "int8")
    assert int8.exit_code == 0, int8.stderr
    manifest = manifest_of(tmp_path / "int8")
    expected = "litert-torch" if source == "pytorch" else "onnx2tf"
    assert manifest["backend"]["tflite"]["converter"] == expected
    assert quantize_metrics(tmp_path / "int8")["evaluation"]["int8"]["mean_cosine"] >= 0.99
    assert (tmp_path / "int8" / "model.tflite").stat().st_size < 0.35 * (
        tmp_path / "fp32" / "model.tflite").stat().st_size
