"""Models nobody here wrote, reduced to their failure classes (issue 25), built in code at the
opset where each failure happens: a pass writing an op the opset lacks, scalar integer inputs,
the runtime's own logging, and the quirks of old exporters (IR 3, reused Constant names, infinite
Clip bounds)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.runtime.feeds import parse_values
from edgepipe.shapes import parse_input_spec
from tests.conftest import assert_one_line_error, run_edgepipe
from tests.test_run_py import run_on_device


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


# ------------------------------------------------------------------ a pass and the model's opset


def _decomposed_hardswish(opset: int) -> onnx.ModelProto:
    """What paddle2onnx writes for HardSwish below opset 14: x * Clip(x + 3, 0, 6) / 6, after a
    convolution so the graph is more than the pattern."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three"),
             numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
         helper.make_node("Add", ["c", "three"], ["a"], name="add"),
         helper.make_node("Clip", ["a", "zero", "six"], ["r"], name="relu6"),
         helper.make_node("Mul", ["c", "r"], ["m"], name="mul"),
         helper.make_node("Div", ["m", "six"], ["y"], name="div")],
        "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, fused", [(12, False), (14, True)])
def test_hardswish_is_fused_only_where_the_opset_has_it(cli, tmp_path, opset, fused):
    path = _save(_decomposed_hardswish(opset), tmp_path / f"hs{opset}.onnx")
    out = tmp_path / "b"
    result = cli("build", path, "--target", "onnxruntime-cpu", "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    ops = _ops(out.with_name("b.build") / "01-fuse.onnx")
    assert ("HardSwish" in ops) is fused, ops
    assert "undone" not in result.stderr


def test_a_pass_that_breaks_the_model_is_undone_not_the_build(cli, tmp_path, monkeypatch):
    """Any rule, ours or onnxscript's, that writes an op the opset lacks is rolled back with a
    warning and a report row; the other passes still run."""
    import onnx_ir as ir

    from edgepipe.passes import PASSES

    class WritesHardSwish:
        name = "careless"
        summary = "rewrites every Relu to HardSwish whatever the opset"

        def apply(self, model: ir.Model) -> int:
            count = 0
            for node in list(model.graph):
                if node.op_type == "Relu":
                    node.op_type = "HardSwish"  # onnx_ir lets a node change its op in place
                    count += 1
            return count

    monkeypatch.setitem(PASSES, "careless", WritesHardSwish())
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                               helper.make_node("Neg", ["r"], ["y"], name="neg")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)]), tmp_path / "m.onnx")
    out = tmp_path / "b"
    result = cli("build", path, "--target", "onnxruntime-cpu", "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    warning = "fuse pass 'careless' undone: it wrote HardSwish (relu), which opset 12 does not define"
    assert warning in result.stderr
    assert _ops(out.with_name("b.build") / "01-fuse.onnx") == {"Relu", "Neg"}
    manifest = json.loads((out / "manifest.json").read_text())
    fuse = next(s for s in manifest["stages"] if s["stage"] == "fuse")
    assert fuse["warnings"] == [warning]
    row = next(r for r in fuse["metrics"]["passes"] if r["pass"] == "careless")
    assert row["undone"].startswith("it wrote HardSwish")
    assert "undone" in (out / "report.md").read_text()


# ------------------------------------------------------------------ scalar and integer inputs


def _branch(name: str, factor: float) -> onnx.GraphProto:
    return helper.make_graph(
        [helper.make_node("Mul", ["x", f"{name}_f"], [f"{name}_y"])], name, [],
        [helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, [1, 512])],
        [numpy_helper.from_array(np.array(factor, np.float32), f"{name}_f")])


def _refusing(name: str) -> onnx.GraphProto:
    """A reshape of 512 values to [sr * 0 + 7, -1]: the model's own way of refusing a sample rate
    (computed from `sr`, so shape inference cannot see it coming)."""
    inits = [numpy_helper.from_array(np.array(0, np.int64), f"{name}_0"),
             numpy_helper.from_array(np.array(7, np.int64), f"{name}_7"),
             numpy_helper.from_array(np.array([-1], np.int64), f"{name}_rest"),
             numpy_helper.from_array(np.array([0], np.int64), f"{name}_axis")]
    nodes = [helper.make_node("Mul", ["sr", f"{name}_0"], [f"{name}_z"]),
             helper.make_node("Add", [f"{name}_z", f"{name}_7"], [f"{name}_r"]),
             helper.make_node("Unsqueeze", [f"{name}_r", f"{name}_axis"], [f"{name}_r1"]),
             helper.make_node("Concat", [f"{name}_r1", f"{name}_rest"], [f"{name}_s"], axis=0),
             helper.make_node("Reshape", ["x", f"{name}_s"], [f"{name}_y"], name="bad_rate")]
    output = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, None)
    return helper.make_graph(nodes, name, [], [output], inits)


def _vad(opset: int = 16) -> onnx.ModelProto:
    """Silero-VAD's interface: audio [1, 512] and a scalar int64 sample rate choosing an If
    branch (16000, 8000, anything else fails inside the runtime)."""
    inner = helper.make_graph(
        [helper.make_node("Equal", ["sr", "k8"], ["is8"]),
         helper.make_node("If", ["is8"], ["y8"], then_branch=_branch("eight", 3.0),
                          else_branch=_refusing("other"))],
        "other_rates", [], [helper.make_tensor_value_info("y8", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(8000, np.int64), "k8")])
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "k16"], ["is16"]),
         helper.make_node("If", ["is16"], ["y"], then_branch=_branch("sixteen", 2.0), else_branch=inner)],
        "vad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 512]),
                helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])],
        [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture
def vad(tmp_path) -> Path:
    return _save(_vad(), tmp_path / "vad.onnx")


def test_random_integer_inputs_that_break_the_model_ask_for_their_values(vad, tmp_path):
    """In a fresh process: ONNX Runtime's own C++ log records must not reach stderr either."""
    done = run_edgepipe("build", vad, "--target", "onnxruntime-cpu", "--out", tmp_path / "b")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "the source model fails on seeded random samples",
                          "Reshape node 'bad_rate'", "integer input 'sr' got random values",
                          "--input sr=A,B or sr=LOW..HIGH")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("how", ["npz-batched", "npz-scalar", "callable", "values", "range", "typed"])
def test_scalar_integer_inputs_take_real_samples_and_declared_values(vad, tmp_path, how):
    rng = np.random.default_rng(0)
    args: list[str | Path] = []
    if how == "npz-batched":  # a leading sample axis over the scalar
        np.savez(tmp_path / "c.npz", x=rng.standard_normal((6, 1, 512)).astype(np.float32),
                 sr=np.full(6, 16000, np.int64))
        args = ["--calib", tmp_path / "c.npz"]
    elif how == "npz-scalar":  # one sample, stored at its own rank 0
        np.savez(tmp_path / "c.npz", x=rng.standard_normal((1, 512)).astype(np.float32),
                 sr=np.array(16000, np.int64))
        args = ["--calib", tmp_path / "c.npz"]
    elif how == "callable":
        (tmp_path / "data.py").write_text(textwrap.dedent("""
            import numpy as np

            def samples():
                rng = np.random.default_rng(0)
                for rate in (16000, 8000, 16000):
                    yield {"x": rng.standard_normal((1, 512)).astype(np.float32), "sr": np.int64(rate)}
        """))
        args = ["--calib", f"{tmp_path / 'data.py'}:samples"]
    elif how == "values":
        args = ["--input", "sr=8000,16000"]
    elif how == "range":
        args = ["--input", "sr=16000..16000"]
    else:
        args = ["--input", "sr:scalar:int64=16000", "--input", "x:1x512"]
    out = tmp_path / "b"
    done = run_edgepipe("build", vad, "--target", "onnxruntime-cpu", "--profile", "fp32", *args, "--out", out)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    sr = next(spec for spec in manifest["inputs"] if spec["name"] == "sr")
    assert sr["shape"] == [] and sr["dtype"] == "int64"
    if how in ("values", "range", "typed"):
        # The device draws its random feeds from the declared values too.
        assert sr["values"] in ("8000,16000", "16000..16000", "16000")
        ran = run_on_device(out, "--output", tmp_path / "o.npz")
        assert ran.returncode == 0, ran.stderr
    audio = rng.standard_normal((1, 512)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=audio, sr=np.array(8000, np.int64))
    ran = run_on_device(out, "--input", tmp_path / "in.npz", "--output", tmp_path / "o.npz")
    assert ran.returncode == 0, ran.stderr
    np.testing.assert_allclose(np.load(tmp_path / "o.npz")["y"], audio * 3.0, rtol=1e-6)


def test_input_value_grammar():
    assert parse_values("8000,16000", "int64") == ("choice", [8000, 16000])
    assert parse_values("0..9", "int64") == ("range", [0, 9])
    override = parse_input_spec("sr:scalar:int64=8000,16000")
    assert override.shape == () and override.dtype == "int64" and override.values == "8000,16000"
    override = parse_input_spec("sr=16000")
    assert override.shape is None and override.values == "16000"
    assert parse_input_spec("x:1x3x8x8").values is None
    # tf2onnx names inputs "name:0": the name is the shortest prefix after which the rest parses
    override = parse_input_spec("serving_default_input_2:0:1x43844x1")
    assert (override.name, override.shape) == ("serving_default_input_2:0", (1, 43844, 1))
    assert parse_input_spec("ids:0:1x128:int64=0..99").name == "ids:0"


@pytest.mark.parametrize("spec, fragment", [
    ("sr=abc", "sr"), ("sr=9..1", "sr"), ("sr=", "sr"), ("sr:scalar:int64=1.5", "sr"),
])
def test_bad_input_values_are_one_line(vad, tmp_path, spec, fragment):
    done = run_edgepipe("build", vad, "--target", "onnxruntime-cpu", "--input", spec, "--out", tmp_path / "b")
    assert done.returncode == 2
    assert_one_line_error(done.stderr, fragment)


# ------------------------------------------------------------------ quirks of older exporters


def test_ir3_initializers_listed_as_inputs_build(cli, tmp_path):
    """caffe2-era files (IR 3) list every initializer among the graph inputs."""
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "ir3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    path = _save(model, tmp_path / "ir3.onnx")
    out = tmp_path / "b"
    result = cli("build", path, "--target", "onnxruntime-cpu", "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [spec["name"] for spec in manifest["inputs"]] == ["x"]


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu"])
def test_reused_constant_names_and_infinite_clip_bounds_build(cli, tmp_path, target):
    """spox names every Constant alike; torch writes Clip(max=inf) for a one-sided clamp."""
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    constant = helper.make_tensor("v", TensorProto.FLOAT, [], [0.5])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c1"], value=constant, name="anon"),
         helper.make_node("Constant", [], ["c2"], value=constant, name="anon"),
         helper.make_node("Mul", ["x", "c1"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "c2"], ["a"], name="add"),
         helper.make_node("Clip", ["a", "low", "high"], ["y"], name="clamp")],
        "quirks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "low"),
         numpy_helper.from_array(np.array(np.inf, np.float32), "high")])
    path = tmp_path / "quirks.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    out = tmp_path / "b"
    result = cli("build", path, "--target", target, "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    ran = run_on_device(out, "--output", tmp_path / "o.npz")
    assert ran.returncode == 0, ran.stderr


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu"])
def test_an_if_condition_of_shape_1x1_builds_for_every_backend(cli, tmp_path, target):
    """torch 1.x writes If conditions of shape [1, 1] (openWakeWord); OpenVINO's frontend takes
    rank 0 or 1 only, so export squeezes them."""
    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    then = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 4])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis"], ["total"], keepdims=1),
         helper.make_node("GreaterOrEqual", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other, name="gate")],
        "if1x1", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    out = tmp_path / "b"
    result = cli("build", path, "--target", target, "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    exported = onnx.load(str(out.with_name("b.build") / "00-export.onnx"))
    assert [n.op_type for n in exported.graph.node][-2:] == ["Squeeze", "If"]


def test_openvino_outputs_keep_their_manifest_names_in_every_process(cli, tmp_path):
    """OpenVINO gives a fused output all the tensor names it absorbed ({'output', 'r'} here), as a
    set whose order follows the process's string hashing: the device must still return 'output'."""
    pytest.importorskip("openvino")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["r"], axes=[1], keepdims=0),
         helper.make_node("Unsqueeze", ["r", "axis"], ["output"])], "names",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(np.array([1], np.int64), "axis")])
    path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    out = tmp_path / "b"
    result = cli("build", path, "--target", "openvino-cpu", "--profile", "fp32", "--out", out)
    assert result.exit_code == 0, result.stderr
    import subprocess
    import sys

    from tests.test_run_py import _DEVICE_LIKE

    for seed in range(6):
        done = subprocess.run([sys.executable, "-c", _DEVICE_LIKE, str(out / "run.py"), "--output",
                               str(tmp_path / f"o{seed}.npz")], capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}, timeout=300)
        assert done.returncode == 0, done.stderr
        assert list(np.load(tmp_path / f"o{seed}.npz")) == ["output"]


def test_cosine_does_not_judge_an_output_that_lies_within_atol_of_zero():
    """A text detector's probability map on random input peaks near 1e-6: float rounding alone
    moved its cosine to 0.989 (PP-OCRv3 det), failing fp32 builds whose every element was within
    1.5e-7. The elementwise test bounds such an output; an output with signal is still judged."""
    from edgepipe.config import AccuracyBudget
    from edgepipe.parity import compare_outputs

    rng = np.random.default_rng(0)
    budget = AccuracyBudget(atol=1e-3, rtol=1e-3, min_cosine=0.99999)
    faint = rng.random((1, 64)) * 1e-6
    noisy = faint + rng.standard_normal((1, 64)) * 1.5e-7
    report = compare_outputs([{"map": faint}], [{"map": noisy}], budget.atol, budget.rtol)
    assert report.min_cosine < 0.999 and report.violations(budget) == []
    loose = AccuracyBudget(atol=1.0, rtol=0.0, min_cosine=0.99)  # within atol, but far apart
    report = compare_outputs([{"map": faint * 1e5}], [{"map": faint[:, ::-1] * 1e5}], loose.atol, loose.rtol)
    assert any("cosine" in v for v in report.violations(loose))
    strong = rng.random((1, 64))
    report = compare_outputs([{"map": strong}], [{"map": strong[:, ::-1].copy()}], budget.atol, budget.rtol)
    assert any("cosine" in v for v in report.violations(budget))
    int8 = AccuracyBudget(atol=None, rtol=None, min_cosine=0.99)  # no elementwise bound: cosine judges
    report = compare_outputs([{"map": faint}], [{"map": faint[:, ::-1].copy()}], None, None)
    assert any("cosine" in v for v in report.violations(int8))
