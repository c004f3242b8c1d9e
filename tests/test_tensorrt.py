"""TensorRT targets on a host without TensorRT: everything around the engine, proven for real.

The QDQ model runs in ONNX Runtime with its accuracy measured, calib.cache parses back to
the QDQ scales, build_engine.sh passes `bash -n` with the flags of the target's TensorRT
line, the pre-checks refuse what TensorRT would refuse. The engine build itself is in the
`gpu` tests at the end, which skip without TensorRT and a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.errors import BadInputError
from edgepipe.quantization.tensorrt_cache import read_cache
from edgepipe.runtime.runners import tensorrt as trt_engine
from edgepipe.trt.build_script import trtexec_args
from edgepipe.trt.plan import EnginePlan, ShapeRange
from edgepipe.trt.precheck import check_shapes, run_prechecks
from tests.conftest import DIGITS, ROOT, assert_one_line_error


def assert_build_error(stderr: str, *fragments: str) -> None:
    """Stage progress lines, then the one-line error (no traceback)."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in stderr and all(line.startswith(("✓", "  warning:")) for line in lines[:-1])
    assert_one_line_error(lines[-1], *fragments)


def manifest_of(bundle: Path) -> dict:
    """The manifest with what the build measured and observed of its host (build.json) put back."""
    from edgepipe.manifest import full_manifest

    return full_manifest(bundle)


def script_flags(bundle: Path) -> list[str]:
    text = (bundle / "build_engine.sh").read_text()
    assert subprocess.run(["bash", "-n", str(bundle / "build_engine.sh")], check=False).returncode == 0
    body = text.split('"$TRTEXEC" \\\n', 1)[1].split("\nif ", 1)[0]
    return [line.strip().rstrip("\\").strip() for line in body.splitlines() if line.strip()]


def qdq_zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [constants[n.input[2]] for n in model.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def derived_target(tmp_path: Path, base: str, name: str, **replace: str) -> Path:
    text = (ROOT / "targets" / f"{base}.toml").read_text().replace(f'name = "{base}"', f'name = "{name}"')
    text = text.replace('aliases = ["jetson"]', "aliases = []")
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_jetson_fp16_bundle_carries_what_the_device_needs(cli, tmp_path):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", "jetson", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "no engine built here (TensorRT is not installed on this host)" in result.stderr
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "build_engine.sh", "edgepipe_runtime", "run.py", "manifest.json"} <= names
    assert (out / "edgepipe_runtime" / "runners" / "tensorrt.py").is_file()
    assert "model.engine" not in names
    manifest = manifest_of(out)
    engine = manifest["backend"]["engine"]
    assert manifest["target"]["name"] == "jetson-orin-nano" and manifest["backend"]["name"] == "tensorrt"
    facts = (engine["tensorrt_version"], engine["compute_capability"], engine["dla_core"])
    assert facts == ("10.3.0", "8.7", None)
    assert engine["precision"] == "fp16" and engine["built"] is False and engine["onnx"] == "model.onnx"
    assert set(engine["device_files"]) == {"model.engine", "model.engine.json", "timing.cache"}
    assert manifest["backend"]["runtime_reports"]["prechecks"]["opset"] == 17
    assert script_flags(out) == ["--onnx=model.onnx", "--saveEngine=model.engine",
                                 "--timingCacheFile=timing.cache", "--fp16", "--memPoolSize=workspace:1024M"]
    assert "TensorRT 10.3" in (out / "build_engine.sh").read_text()


def test_jetson_int8_is_symmetric_qdq_with_its_accuracy_measured(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "jetson",
                 "--profile", "int8", "--calib", trained_digits["train"], "--eval", trained_digits["test"],
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    quantize = next(s for s in manifest["stages"] if s["stage"] == "quantize")["metrics"]
    top1_float = quantize["evaluation"]["float"]["top1"]
    top1_int8 = quantize["evaluation"]["int8"]["top1"]
    assert top1_float - top1_int8 <= 0.01, (top1_float, top1_int8)
    model = onnx.load(str(out / "model.onnx"))
    zeros = qdq_zero_points(model)
    assert len(zeros) >= 8 and all(z.dtype == np.int8 and not z.any() for z in zeros)
    header, scales = read_cache(out / "calib.cache")
    assert header == "TRT-100300-MinMaxCalibration"
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantized = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    for node in quantized:
        assert float(constants[node.input[1]]) == pytest.approx(scales[node.input[0]], rel=1e-6)
    engine = manifest["backend"]["engine"]
    assert engine["int8_mode"] == "strongly-typed" and engine["precision"] == "int8"
    flags = script_flags(out)
    assert "--stronglyTyped" in flags and not {"--int8", "--fp16"} & set(flags)
    # The lower stage's parity ran the QDQ model in ONNX Runtime: what the engine is built from.
    lower = next(s for s in manifest["stages"] if s["stage"] == "lower")
    assert lower["parity"]["min_cosine"] > 0.99
    # TensorRT cannot run here: the speed gate read an estimate for the Orin Nano's GPU, which stays
    # in the bundle (it is as reproducible as the model) and its report.
    speed = quantize["estimated_int8_speed"]
    assert speed["estimated"] and not speed["measured"] and speed["device"]["int8_tops"] == 20.0
    assert speed["int8_layers"] >= 3 and speed["float_layers"] == 0 and 1.1 <= speed["speedup"] <= 2.0
    assert "Speed **estimated**, not measured" in (out / "report.md").read_text()


def test_tensorrt_speed_gate_reads_the_estimate_and_refuses_what_cannot_pay(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "jetson",
                 "--profile", "int8", "--calib", trained_digits["train"], "--min-speedup", "3", "--out", out)
    assert result.exit_code == 1 and not out.exists()
    message = result.stderr.strip().splitlines()[-1]
    assert "< 3x (estimated for the target's GPU" in message and "Traceback" not in result.stderr
    # a target whose GPU peaks are not declared is not estimated, and says which facts are missing
    generic = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "nvidia-gpu",
                  "--profile", "int8", "--calib", trained_digits["train"], "--out", tmp_path / "g")
    assert generic.exit_code == 0, generic.stderr
    full_report = (tmp_path / "g.build" / "report.md").read_text()  # the build folder's: what it measured
    missing = "lacks int8_tops, fp16_tflops, fp32_tflops, memory_gbps"
    assert f"Speed not measured: the target's [device] {missing}" in full_report


def test_tensorrt_8_int8_builds_from_float_onnx_and_calibration_cache(cli, tmp_path, trained_digits):
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", "jetson-xavier-nx",
                 "--profile", "int8", "--calib", trained_digits["train"], "--out", out)
    assert result.exit_code == 0, result.stderr
    flags = script_flags(out)
    assert flags[0] == "--onnx=model.float.onnx"
    assert {"--int8", "--calib=calib.cache", "--fp16", "--memPoolSize=workspace:1024"} <= set(flags)
    assert "--stronglyTyped" not in flags
    header, scales = read_cache(out / "calib.cache")
    assert header.startswith("TRT-8502-")
    float_model = onnx.load(str(out / "model.float.onnx"))
    assert not [n for n in float_model.graph.node if "Quantize" in n.op_type]
    tensors = {name for n in float_model.graph.node for name in (*n.input, *n.output)}
    qdq = onnx.load(str(out / "model.onnx"))
    quantized = {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert set(scales) == quantized and quantized <= tensors  # the cache names the float graph's tensors
    # Stripping the QDQ pairs keeps the int8 weights' values: the float model computes like the QDQ one.
    import onnxruntime as ort

    samples = np.load(trained_digits["test"])["input"][:32]
    float_model = ort.InferenceSession(str(out / "model.float.onnx"))
    qdq_model = ort.InferenceSession(str(out / "model.onnx"))
    agree = [float_model.run(None, {"input": x[None]})[0].argmax()
             == qdq_model.run(None, {"input": x[None]})[0].argmax() for x in samples]
    assert np.mean(agree) >= 0.9


@pytest.mark.parametrize(("version", "precision", "quantized", "expected", "absent"), [
    ("8.5.2", "fp16", False, ["--fp16", "--memPoolSize=workspace:512"], ["--stronglyTyped"]),
    ("8.5.2", "int8", True, ["--int8", "--calib=calib.cache", "--fp16"], ["--stronglyTyped"]),
    ("10.3.0", "fp16", False, ["--fp16", "--memPoolSize=workspace:512M"], ["--stronglyTyped", "--int8"]),
    ("10.3.0", "int8", True, ["--stronglyTyped"], ["--int8", "--fp16", "--calib=calib.cache"]),
    ("11.4.0", "fp16", False, ["--onnx=model.fp16.onnx"], ["--fp16", "--stronglyTyped", "--int8"]),
    ("11.4.0", "int8", True, ["--onnx=model.onnx"],
     ["--fp16", "--stronglyTyped", "--int8", "--calib=calib.cache"]),
])
def test_trtexec_flags_follow_the_tensorrt_line(version, precision, quantized, expected, absent):
    from edgepipe.backends.tensorrt import TensorRtLowerSettings, make_plan

    lower = TensorRtLowerSettings(tensorrt_version=version, workspace_mib=512)
    plan = make_plan(None, lower, "fp16" if precision == "fp16" else "fp32", quantized, {}, False)
    args = trtexec_args(plan)
    assert set(expected) <= set(args) and not set(absent) & set(args), args


def test_tensorrt_11_fp16_gets_an_fp16_onnx_with_float32_io(cli, tmp_path):
    target = derived_target(tmp_path, "nvidia-gpu", "trt11", **{'"10.13.0"': '"11.4.0"'})
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", target, "--profile", "fp16", "--out", out)
    assert result.exit_code == 0, result.stderr
    model = onnx.load(str(out / "model.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert "--fp16" not in script_flags(out)


def test_dla_core_flags_and_refusals(cli, tmp_path):
    dla = derived_target(tmp_path, "jetson-agx-orin", "agx-dla0", **{"dla_core = -1 ": "dla_core = 0 "})
    out = tmp_path / "b"
    result = cli("build", DIGITS, "--target", dla, "--profile", "fp16", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert {"--useDLACore=0", "--allowGPUFallback"} <= set(script_flags(out))
    fp32 = cli("build", DIGITS, "--target", dla, "--profile", "fp32", "--out", tmp_path / "c")
    assert fp32.exit_code == 2
    assert_build_error(fp32.stderr, "DLA runs fp16 and int8 only")
    missing = derived_target(tmp_path, "jetson-agx-orin", "agx-dla5", **{"dla_core = -1 ": "dla_core = 5 "})
    bad = cli("build", DIGITS, "--target", missing, "--out", tmp_path / "d")
    assert bad.exit_code == 2 and "dla_core 5 asked, the device has 2 DLA cores" in bad.stderr
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


def _onnx(path: Path, nodes, inputs, outputs, initializers=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_precheck_rejects_an_op_the_devices_tensorrt_lacks(cli, tmp_path):
    """LayerNormalization: supported by TensorRT 10.x's parser, not by 8.5's (JetPack 5)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    ln = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="encoder.ln", axis=-1)
    params = [numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
              numpy_helper.from_array(np.zeros(8, np.float32), "beta")]
    model = _onnx(tmp_path / "ln.onnx", [ln], [x], [y], params)
    old = cli("build", model, "--target", "jetson-xavier-nx", "--profile", "fp32", "--out", tmp_path / "old")
    assert old.exit_code == 2
    assert_build_error(old.stderr, "node 'encoder.ln'", "LayerNormalization", "TensorRT 8.5")
    assert not (tmp_path / "old").exists()
    new = cli("build", model, "--target", "jetson", "--profile", "fp32", "--out", tmp_path / "new")
    assert new.exit_code == 0, new.stderr
    unique = _onnx(tmp_path / "unique.onnx", [helper.make_node("Unique", ["x"], ["y"], name="dedupe")],
                   [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    result = cli("build", unique, "--target", "jetson", "--profile", "fp32", "--out", tmp_path / "u")
    assert result.exit_code == 2
    assert_build_error(result.stderr, "node 'dedupe' is op Unique", "TensorRT 10.3")


def test_precheck_rejects_an_opset_outside_the_parsers_range(cli, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    model = _onnx(tmp_path / "relu18.onnx", [helper.make_node("Relu", ["x"], ["y"], name="act")], [x],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], opset=18)
    result = cli("build", model, "--target", "jetson-xavier-nx", "--profile", "fp32", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_build_error(result.stderr, "opset 18", "7-17")


def test_precheck_rejects_asymmetric_int8(cli, tmp_path, trained_digits):
    target = derived_target(tmp_path, "jetson-orin-nano", "asym", **{
        'activations = "int8"': 'activations = "uint8"'})
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", target,
                 "--profile", "int8", "--calib", trained_digits["train"], "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_build_error(result.stderr, "QuantizeLinear", "uint8", "symmetric int8 (zero point 0)")
    assert not (tmp_path / "b").exists()


def _dynamic_conv(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])
    values = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    weight = numpy_helper.from_array(values, "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])
    return _onnx(tmp_path / "dynamic.onnx", [conv], [x], [y], [weight])


def test_dynamic_shapes_need_a_profile(cli, tmp_path):
    model = _dynamic_conv(tmp_path)
    plain = onnx.load(str(model))
    with pytest.raises(BadInputError, match=r"input 'x' has dynamic shape batchx3x8x8 and no optimization"):
        check_shapes(plain, {})
    with pytest.raises(BadInputError, match="does not fit"):
        check_shapes(plain, {"x": ShapeRange((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 9, 8))})
    out = tmp_path / "b"
    result = cli("build", model, "--target", "jetson", "--input", "x:1x3x8x8/4x3x8x8/16x3x8x8", "--out", out)
    assert result.exit_code == 0, result.stderr
    flags = script_flags(out)
    assert {"--minShapes=x:1x3x8x8", "--optShapes=x:4x3x8x8", "--maxShapes=x:16x3x8x8"} <= set(flags)
    assert manifest_of(out)["backend"]["engine"]["shapes"] == {
        "x": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [16, 3, 8, 8]}}
    static = cli("build", model, "--target", "jetson", "--input", "x:2x3x8x8", "--out", tmp_path / "s")
    assert static.exit_code == 0, static.stderr  # a static --input makes the ONNX static: no profile
    assert not [f for f in script_flags(tmp_path / "s") if "Shapes" in f]
    bad = cli("build", model, "--target", "jetson", "--input", "x:4x3x8x8/1x3x8x8/16x3x8x8",
              "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "min <= opt <= max" in bad.stderr


def test_two_of_four_weights_build_with_sparsity(cli, tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])
    weight = np.random.default_rng(1).standard_normal((8, 8, 3, 3)).astype(np.float32)
    weight.reshape(8, 2, 4, 3, 3)[:, :, :2] = 0  # two of every four input channels zero
    model = _onnx(tmp_path / "sparse.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                  [x], [y], [numpy_helper.from_array(weight, "w")])
    out = tmp_path / "b"
    result = cli("build", model, "--target", "jetson", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert "--sparsity=enable" in script_flags(out) and "2:4 sparse weights" in result.stderr


def test_run_py_and_verify_on_a_host_without_tensorrt(cli, tmp_path):
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", "jetson", "--out", out).exit_code == 0
    built = subprocess.run([sys.executable, str(out / "run.py"), "--build-engine"], capture_output=True,
                           text=True, check=False)
    assert built.returncode == 3
    assert_one_line_error(built.stderr, "TensorRT is not installed here")
    ran = subprocess.run([sys.executable, str(out / "run.py")], capture_output=True, text=True, check=False)
    assert ran.returncode == 3 and "TensorRT" in ran.stderr
    from_bundle = cli("build", "--from-bundle", out)
    assert from_bundle.exit_code == 3
    assert_one_line_error(from_bundle.stderr, "TensorRT is not installed here")
    # What the device writes itself is accepted unlisted; anything else is not.
    (out / "model.engine").write_bytes(b"engine")
    (out / "model.engine.json").write_text("{}")
    assert cli("verify", out).exit_code == 0
    (out / "stray.bin").write_bytes(b"x")
    result = cli("verify", out)
    assert result.exit_code == 1 and "stray.bin: not listed" in result.stdout + result.stderr
    assert not list(out.rglob("__pycache__"))


def test_from_bundle_refuses_a_bundle_without_an_engine_plan(cli, digits_bundle):
    result = cli("build", "--from-bundle", digits_bundle)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "has no engine to build")


def test_engine_compatibility_names_the_mismatch_and_the_fix():
    plan = {"tensorrt_version": "10.3.0", "compute_capability": "8.7"}
    record = {"tensorrt": "10.3.0.30", "compute_capability": "8.7"}
    same = {"tensorrt": "10.3.0", "compute_capability": "8.7"}
    assert trt_engine.compatibility_problems(plan, record, same) == []
    problems = trt_engine.compatibility_problems(plan, record,
                                                 {"tensorrt": "8.5.2.2", "compute_capability": "7.2"})
    assert len(problems) == 2
    assert "built with TensorRT 10.3.0.30, this device has 8.5.2.2" in problems[0]
    assert "--build-engine" in problems[0] and "compute capability 8.7, this GPU is 7.2" in problems[1]
    # No engine yet: the plan itself does not fit this device's TensorRT line.
    unbuilt = trt_engine.compatibility_problems(plan, None, {"tensorrt": "8.5.2", "compute_capability": None})
    assert unbuilt == ["this bundle targets TensorRT 10.3.0, this device has 8.5.2: rebuild the bundle for a "
                       "target with this TensorRT"]


def test_prechecks_on_the_trained_model_pass_for_every_jetson_line(tmp_path, digits_onnx):
    for version in ("8.5.2", "10.3.0", "11.4.0"):
        summary = run_prechecks(digits_onnx, EnginePlan("model.onnx", version, None, "fp16"))
        assert summary.opset == 17 and summary.qdq_nodes == 0 and summary.dynamic_inputs == ()


# ---------------------------------------------------------------- with TensorRT and a GPU


@pytest.mark.gpu
def test_engine_built_on_this_host_runs_with_parity(cli, tmp_path, trained_digits):
    pytest.importorskip("tensorrt")
    out = tmp_path / "b"
    local = trt_engine.local_facts()
    target = derived_target(tmp_path, "nvidia-gpu", "local-gpu", **{'"10.13.0"': f'"{local["tensorrt"]}"'})
    result = cli("build", DIGITS, "--weights", trained_digits["weights"], "--target", target,
                 "--profile", "int8", "--calib", trained_digits["train"], "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(out)
    assert manifest["backend"]["artifact"] == "model.engine" and manifest["backend"]["engine"]["built"]
    lower = next(s for s in manifest["stages"] if s["stage"] == "lower")
    assert lower["parity"]["min_cosine"] > 0.99
    ran = subprocess.run([sys.executable, str(out / "run.py"), "--benchmark", "--runs", "20", "--json"],
                         capture_output=True, text=True, check=False)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["runtime"]["name"] == "tensorrt"


@pytest.mark.gpu
def test_run_py_builds_the_engine_on_the_device(cli, tmp_path):
    pytest.importorskip("tensorrt")
    local = trt_engine.local_facts()
    target = derived_target(tmp_path, "nvidia-gpu", "device-gpu", **{
        '"10.13.0"': f'"{local["tensorrt"]}"',
        "workspace_mib = 4096": "workspace_mib = 1024\nbuild_on_host = false"})
    out = tmp_path / "b"
    assert cli("build", DIGITS, "--target", target, "--out", out).exit_code == 0
    built = subprocess.run([sys.executable, str(out / "run.py"), "--build-engine", "--benchmark",
                            "--runs", "10"], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    assert (out / "model.engine").is_file()
    assert json.loads((out / "model.engine.json").read_text())["tensorrt"]
    assert cli("verify", out).exit_code == 0
