"""int8 quantization: real calibration data, the accuracy budget, fallback, the TensorRT cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgepipe.quantization.tensorrt_cache import read_cache, version_code
from tests.conftest import DIGITS, MINILM_TINY, assert_one_line_error, portable_of

ROOT = Path(__file__).resolve().parent.parent


def _quantize_metrics(bundle: Path) -> dict:
    """The quantize stage's metrics, with what it measured (build.json) put back."""
    from edgepipe.manifest import full_manifest

    return next(s for s in full_manifest(bundle)["stages"] if s["stage"] == "quantize")["metrics"]


def _ops(path: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_digits_int8_within_one_point_of_float(cli, tmp_path, trained_digits):
    out = tmp_path / "int8"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", "int8", "--calib", trained_digits["test"], "--eval", trained_digits["test"],
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    evaluation = metrics["evaluation"]
    assert metrics["engine"] == "onnxruntime"
    assert evaluation["samples"] == 360
    assert evaluation["float"]["top1"] - evaluation["int8"]["top1"] <= 1.0
    assert evaluation["int8"]["top1"] > 95
    assert evaluation["int8"]["mean_cosine"] > 0.999
    assert metrics["activations"] == "uint8" and metrics["scheme"] == "static"
    assert metrics["calibration"]["samples"] == 300 and not metrics["calibration"]["random"]
    ops = _ops(portable_of(out))
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert metrics["size_bytes"]["int8"] < 0.6 * metrics["size_bytes"]["float"]
    report = (out / "report.md").read_text()
    assert "### int8 quantization" in report and "Worst quantized tensors" in report
    assert "accuracy on real inputs is unknown" not in report


def _profile(tmp_path: Path, on_exceed: str) -> Path:
    path = tmp_path / f"int8-{on_exceed}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "int8-{on_exceed}"
        description = "int8, {on_exceed} when the budget breaks"
        extends = "int8"
        [quantize.budget]
        on_exceed = "{on_exceed}"
        """))
    return path


def test_hostile_model_fails_the_budget_with_fail(cli, tmp_path, trained_digits, hostile_onnx):
    out = tmp_path / "bundle"
    result = cli("build", hostile_onnx, "--profile", _profile(tmp_path, "fail"), "--calib",
                 trained_digits["test"], "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 1, result.stderr
    assert_one_line_error(result.stderr.splitlines()[-1], "int8 quantization exceeds the budget", "top-1")
    assert not out.exists() and not (tmp_path / "bundle.build").exists()


def test_hostile_model_is_rescued_by_fallback(cli, tmp_path, trained_digits, hostile_onnx):
    out = tmp_path / "bundle"
    result = cli("build", hostile_onnx, "--min-speedup", "0",
                 "--profile", _profile(tmp_path, "fallback"), "--calib",
                 trained_digits["test"], "--eval", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    evaluation = metrics["evaluation"]
    # Quantized throughout, the crushed channels wreck the model ...
    assert evaluation["float"]["top1"] - evaluation["int8_before_fallback"]["top1"] > 5
    # ... and keeping the outlier layer in float brings it back within budget.
    assert evaluation["float"]["top1"] - evaluation["int8"]["top1"] <= 1.0
    kept = [node for row in metrics["fallback"] for node in row["nodes"]]
    assert 1 <= len(metrics["fallback"]) <= 4
    assert any("features.0" in node or "features.2" in node for node in kept), kept
    assert metrics["worst_layers"][0]["sqnr_db"] < 20
    # Each step was chosen by its measured effect on the output (calibration samples).
    assert all(0 < row["probe_cosine"] <= 1 for row in metrics["fallback"])
    assert all(row["top1_agreement_after"] is not None for row in metrics["fallback"])
    assert "Fallback steps, each keeping one more tensor's nodes in float" in (out / "report.md").read_text()


@pytest.fixture
def digits_pngs(tmp_path, trained_digits) -> Path:
    """Held-out digits as 8x8 grayscale PNGs in one folder per class (ImageFolder)."""
    from PIL import Image

    data = np.load(trained_digits["test"])
    root = tmp_path / "images"
    for index, (image, label) in enumerate(zip(data["input"], data["labels"], strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.rint(image[0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index}.png")
    return root


def test_image_folders_calibrate_and_evaluate_with_recorded_preprocessing(cli, tmp_path, trained_digits,
                                                                          digits_pngs):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--profile", "int8",
                 "--calib", digits_pngs, "--eval", digits_pngs, "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    assert metrics["evaluation"]["float"]["top1"] > 95  # labels from the folder names
    assert metrics["evaluation"]["float"]["top1"] - metrics["evaluation"]["int8"]["top1"] <= 1.0
    manifest = json.loads((out / "manifest.json").read_text())
    preprocessing = manifest["inputs"][0]["preprocessing"]
    assert preprocessing["kind"] == "image" and preprocessing["channels"] == "gray"
    assert preprocessing["layout"] == "NCHW" and preprocessing["crop"] == [8, 8]
    assert preprocessing["scale"] == pytest.approx(1 / 255)


def test_callable_calibration_source(cli, tmp_path, trained_digits):
    script = tmp_path / "calib.py"
    script.write_text(textwrap.dedent(f"""\
        import numpy as np

        def samples():
            data = np.load({str(trained_digits["test"])!r})["input"]
            for image in data[:50]:
                yield {{"input": image[None]}}
        """))
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--profile", "int8",
                 "--calib", f"{script}:samples", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    assert metrics["calibration"]["samples"] == 50
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    assert "only fidelity" in " ".join(stages[2]["warnings"])


def test_random_calibration_only_when_asked_and_then_flagged(cli, tmp_path, trained_digits):
    missing = cli("build", DIGITS, "--weights", trained_digits["weights"], "--profile", "int8",
                  "--out", tmp_path / "none")
    assert missing.exit_code == 2
    assert_one_line_error(missing.stderr, "needs calibration data", "--calib random")
    out = tmp_path / "random"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--profile", "int8",
                 "--calib", "random", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert _quantize_metrics(out)["calibration"]["random"] is True
    assert "**Calibrated on random data" in (out / "report.md").read_text()
    assert "accuracy is unknown" in result.stderr


def _bad_calibration(tmp_path: Path, problem: str) -> tuple[Path, str]:
    if problem == "empty_folder":
        (tmp_path / "calib").mkdir()
        return tmp_path / "calib", "holds no .npy, .npz or image files"
    if problem == "wrong_shape":
        np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), np.float32))
        return tmp_path / "x.npy", "has shape [4, 3, 8, 8]"
    if problem == "corrupt_image":
        folder = tmp_path / "images" / "0"
        folder.mkdir(parents=True)
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
        return tmp_path / "images", "broken.png: unreadable image"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["empty_folder", "wrong_shape", "corrupt_image"])
def test_bad_calibration_sets_exit_2_and_write_nothing(cli, tmp_path, trained_digits, problem):
    calib, message = _bad_calibration(tmp_path, problem)
    out = tmp_path / "bundle"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--profile", "int8",
                 "--calib", calib, "--out", out)
    assert result.exit_code == 2, result.stderr
    assert_one_line_error(result.stderr, message)
    assert not out.exists() and not (tmp_path / "bundle.build").exists()


def test_tensorrt_calibration_cache_round_trips_to_the_qdq_scales(cli, tmp_path, trained_digits):
    target = tmp_path / "int8-symmetric.toml"
    target.write_text((ROOT / "targets" / "onnxruntime-cpu.toml").read_text()
                      .replace('name = "onnxruntime-cpu"', 'name = "symmetric-int8"')
                      .replace('aliases = ["cpu"]', "aliases = []")
                      .replace('activations = "uint8"', 'activations = "int8"\ncalibration_cache = true\n'
                                                        'tensorrt_version = "10.3.0"'))
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--target", target,
                 "--profile", "int8", "--calib", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    header, scales = read_cache(out / "calib.cache")
    # The header names the calibrator of the ranges `method = "auto"` chose (TensorRT has none for
    # percentile or MSE ranges: those go under its default, entropy).
    chosen = _quantize_metrics(out)["calibration"]["ranges"]
    expected = "MinMaxCalibration" if chosen == "minmax" else "EntropyCalibration2"
    assert header == f"TRT-100300-{expected}" and version_code("8.6.1") == 8601
    model = onnx.load(str(portable_of(out)))
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in scales:
            assert constants[node.input[2]].dtype == np.int8 and int(constants[node.input[2]]) == 0
            assert float(constants[node.input[1]]) == pytest.approx(scales[node.input[0]], rel=1e-6)
            checked += 1
    assert checked >= 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert "calib.cache" in {f["path"] for f in manifest["files"]}


def test_calibration_memory_stays_flat_with_1000_samples(tmp_path):
    """Peak RSS with 1,000 streamed samples stays near that of 50 (held, it would be ~1 GiB)."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())
    path = tmp_path / "wide.onnx"
    torch.onnx.export(model.eval(), (torch.rand(1, 3, 64, 64),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["output"])
    script = textwrap.dedent(f"""\
        import resource, sys
        from pathlib import Path
        import numpy as np
        from edgepipe.quantization.ranges import calibrate
        count, method = int(sys.argv[1]), sys.argv[2]
        rng = np.random.default_rng(0)
        samples = ({{"input": rng.random((1, 3, 64, 64), dtype=np.float32)}} for _ in range(count))
        calibrate(Path({str(path)!r}), samples, Path(sys.argv[3]), method=method, percentile=99.99,
                  symmetric=False)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        """)

    def peak_kib(count: int, method: str) -> int:
        done = subprocess.run([sys.executable, "-c", script, str(count), method,
                               str(tmp_path / f"{count}-{method}.json")],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        return int(done.stdout.strip().splitlines()[-1])

    for method in ("minmax", "entropy"):
        small, large = peak_kib(50, method), peak_kib(1000, method)
        # Each sample's activations are 1.5 MiB: holding 1,000 would add ~1.5 GiB.
        assert large - small < 150 * 1024, (method, small, large)


def test_transformer_uses_its_own_scheme(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("build", MINILM_TINY, "--min-speedup", "0",
                 "--target", "onnxruntime-cpu", "--profile", "int8",
                 "--calib", "random", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    assert metrics["model_type"] == "transformer" and metrics["scheme"] == "dynamic"
    ops = _ops(portable_of(out))
    assert ops["MatMulInteger"] > 0 and ops["LayerNormalization"] > 0
    assert ops["QuantizeLinear"] == 0  # LayerNorm, Softmax and GELU stay float
    assert metrics["evaluation"]["int8"]["mean_cosine"] > 0.985



def test_run_py_feeds_an_image_as_calibration_did(cli, tmp_path, trained_digits, digits_pngs):
    """The device's run.py preprocesses an image exactly as calibration did: same outputs as the
    bundle fed the tensor the build made from that image."""
    from edgepipe.artifact import TensorSpec
    from edgepipe.data.preprocessing import ImagePreprocessing, resolve

    out = tmp_path / "b"
    assert cli("build", DIGITS, "--min-speedup", "0",
               "--weights", trained_digits["weights"], "--profile", "int8",
               "--calib", digits_pngs, "--out", out).exit_code == 0
    image = next(digits_pngs.rglob("*.png"))
    done = subprocess.run([sys.executable, str(out / "run.py"), "--input", str(image), "--output",
                           str(tmp_path / "o.npz"), "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    spec = manifest["inputs"][0]
    expected = resolve(ImagePreprocessing(), TensorSpec(spec["name"], tuple(spec["shape"]), spec["dtype"],
                                                        spec["layout"])).image_to_array(image)[None]
    from edgepipe.runtime.runners import open_runner

    with open_runner(out, manifest) as runner:
        reference = runner.infer({spec["name"]: expected})
    device = np.load(tmp_path / "o.npz")
    for name, value in reference.items():
        np.testing.assert_array_equal(device[name], value)


def test_exclusions_and_first_last_layers_stay_float(cli, tmp_path, trained_digits):
    profile = tmp_path / "keep.toml"
    profile.write_text(textwrap.dedent("""\
        name = "keep"
        description = "int8 with the first and last layers and every MaxPool in float"
        extends = "int8"
        [quantize]
        keep_first_last = true
        exclude_op_types = ["MaxPool"]
        """))
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--min-speedup", "0",
                 "--weights", trained_digits["weights"], "--profile", profile,
                 "--calib", trained_digits["test"], "--out", out)
    assert result.exit_code == 0, result.stderr
    excluded = _quantize_metrics(out)["excluded"]
    assert any("MaxPool" in n for n in excluded)
    assert any("features.0" in n for n in excluded) and any("classifier" in n for n in excluded)
    model = onnx.load(str(portable_of(out)))
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in excluded and node.op_type in ("Conv", "Gemm"):
            weight = producers.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear", node.name

    profile.write_text(profile.read_text() + 'exclude_nodes = ["no-such-node"]\n')
    bad = cli("build", DIGITS, "--min-speedup", "0",
              "--weights", trained_digits["weights"], "--profile", profile,
              "--calib", trained_digits["test"], "--out", tmp_path / "c")
    assert bad.exit_code == 2
    assert "no node named 'no-such-node'" in bad.stderr.splitlines()[-1]
