"""Hostile inputs, round two (the cases a corpus file cannot express; the others are in
tests/corpus): NaN that must not pass a gate, control flow that must survive every rewrite, corrupt
profiles, user code that exits, manifest paths that reach outside the bundle, outputs that would
clobber a bundle or an input, racing builds, SIGTERM, and messages that say what happened."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe.manifest import verify_bundle
from tests.conftest import DIGITS, RESNET18, ROOT, assert_one_line_error
from tests.test_run_py import run_on_device


def _factory(tmp_path: Path, body: str, name: str = "model") -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("import sys\nimport torch\n\n" + textwrap.dedent(body))
    return f"{path}:{name}"


# ---------------------------------------------------------------- NaN never passes a gate


def test_a_model_whose_output_is_nan_on_random_samples_asks_for_real_ones(cli, tmp_path):
    model = _factory(tmp_path, """\
        class Log(torch.nn.Module):
            def forward(self, x):
                return torch.log(x)

        def model():
            return Log(), {"input": torch.rand(1, 8) + 0.5}
        """)
    result = cli("build", model, "--target", "onnxruntime-cpu", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "seeded random samples", "--calib")
    np.save(tmp_path / "positive.npy", np.random.default_rng(0).random((8, 1, 8), np.float32) + 0.1)
    good = cli("build", model, "--target", "onnxruntime-cpu", "--calib", tmp_path / "positive.npy",
               "--out", tmp_path / "b")
    assert good.exit_code == 0, good.stderr


def test_a_nan_weight_is_refused_by_name(cli, tmp_path):
    model = _factory(tmp_path, """\
        def model():
            layer = torch.nn.Linear(8, 4)
            with torch.no_grad():
                layer.weight[0, 0] = float("nan")
            return layer, {"input": torch.randn(1, 8)}
        """)
    result = cli("build", model, "--target", "onnxruntime-cpu", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "weight 'weight' holds NaN")
    assert not (tmp_path / "b").exists()


def test_nan_in_a_stage_output_breaks_parity():
    from edgepipe.config import AccuracyBudget
    from edgepipe.parity import compare_outputs

    reference = [{"y": np.ones((1, 4), np.float32)}]
    broken = [{"y": np.array([[1, np.nan, 1, 1]], np.float32)}]
    report = compare_outputs(reference, broken, 1e-3, 1e-3)
    assert report.violations(AccuracyBudget())[0] == \
        "output 'y' holds 1 NaN or infinite values where the reference is finite"
    assert report.violations(AccuracyBudget(atol=None, rtol=None, min_cosine=0.0))


# ---------------------------------------------------------------- control flow survives every rewrite


def _scan_model() -> onnx.ModelProto:
    """A running sum: the body returns its state and a copy of it (the case onnx_ir's Identity
    elimination folded into one value)."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "x_i"], ["s_out"]),
         helper.make_node("Identity", ["s_out"], ["scan_out"])],
        "body", [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [4]),
                 helper.make_tensor_value_info("x_i", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("scan_out", TensorProto.FLOAT, [4])])
    init = onnx.numpy_helper.from_array(np.zeros(4, np.float32), "s0")
    graph = helper.make_graph(
        [helper.make_node("Log", ["x"], ["lx"]),
         helper.make_node("Scan", ["s0", "lx"], ["final", "steps"], body=body, num_scan_inputs=1)],
        "scan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("final", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("steps", TensorProto.FLOAT, [3, 4])], [init])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _if_model() -> onnx.ModelProto:
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["a"]),
                              helper.make_node("Identity", ["a"], ["t"])],
                             "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3, 4])])
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other)],
        "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _if_outer_model() -> onnx.ModelProto:
    """An If branch that returns a value of the outer graph through an Identity, that value also
    an output of the model (onnx_ir's elimination renamed it, or refused the model)."""
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, 4])])
    other = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3, 4])])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]),
         helper.make_node("If", ["positive"], ["y"], then_branch=then, else_branch=other)],
        "if-outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])],
        [onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _loop_model() -> onnx.ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Mul", ["v_in", "two"], ["v_out"]),
         helper.make_node("Identity", ["v_out"], ["scan"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("scan", TensorProto.FLOAT, [3, 4])],
        [onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "keep", "x"], ["last", "all"], body=body)],
        "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("last", TensorProto.FLOAT, [3, 4]),
         helper.make_tensor_value_info("all", TensorProto.FLOAT, [3, 3, 4])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "trips"),
         onnx.numpy_helper.from_array(np.array(True), "keep")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("profile", ["default", "export-lower"])
@pytest.mark.parametrize("kind", ["scan", "if", "if-outer", "loop"])
@pytest.mark.parametrize("target", ["onnxruntime-cpu", "openvino-cpu"])
def test_control_flow_survives_every_rewrite(cli, tmp_path, kind, target, profile):
    import onnxruntime as ort

    if target == "openvino-cpu":
        pytest.importorskip("openvino")
    model = {"scan": _scan_model, "if": _if_model, "if-outer": _if_outer_model, "loop": _loop_model}[kind]()
    path = tmp_path / f"{kind}.onnx"
    onnx.save(model, str(path))
    samples = np.random.default_rng(1).random((6, 3, 4), np.float32) + 0.1  # positive: Log is defined
    np.save(tmp_path / "x.npy", samples)
    args = []
    if profile == "export-lower":
        (tmp_path / "p.toml").write_text('name = "el"\ndescription = "d"\nstages = ["export", "lower"]\n')
        args = ["--profile", tmp_path / "p.toml"]
    out = tmp_path / "b"
    result = cli("build", path, "--target", target, "--calib", tmp_path / "x.npy", *args, "--out", out)
    assert result.exit_code == 0, result.stderr
    np.save(tmp_path / "one.npy", samples[2])
    ran = run_on_device(out, "--input", tmp_path / "one.npy", "--output", tmp_path / "out.npz")
    assert ran.returncode == 0, ran.stderr
    expected = ort.InferenceSession(str(path)).run(None, {"x": samples[2]})
    got = np.load(tmp_path / "out.npz")
    for name, value in zip([o.name for o in model.graph.output], expected, strict=True):
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- corrupt profiles are bad input


@pytest.mark.parametrize("samples", [[1.0] * 9 + [float("nan")], [float("nan")] * 10, [-1.0] * 10, [0.0] * 10,
                                     "fast"])
def test_compare_refuses_corrupt_profiles(cli, tmp_path, digits_bundle, samples):
    good = tmp_path / "good.json"
    assert cli("profile", digits_bundle, "--runs", "12", "--out", good).exit_code == 0
    data = json.loads(good.read_text())
    data["latency_ms"]["samples"] = samples
    data["latency_ms"].pop("rounds")
    corrupt = tmp_path / "corrupt.hostile.json"  # written with NaN on purpose
    corrupt.write_text(json.dumps(data))
    result = cli("compare", good, corrupt)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "corrupt.hostile.json", "finite, positive")


# ---------------------------------------------------------------- user code that exits


def test_sys_exit_in_user_code_is_an_error_naming_it(cli, tmp_path):
    factory = _factory(tmp_path, """\
        def model():
            sys.exit(0)
        """)
    result = cli("build", factory, "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, factory, "SystemExit")
    calib = tmp_path / "calib.py"
    calib.write_text("import sys\n\ndef samples():\n    yield from ()\n    raise SystemExit(0)\n\n"
                     "def boom():\n    raise RuntimeError('disk on fire')\n\n"
                     "def typo():\n    return undefined_name\n")
    for function, fragment in (("samples", "SystemExit"), ("boom", "RuntimeError: disk on fire"),
                               ("typo", "NameError")):
        result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--calib", f"{calib}:{function}",
                     "--out", tmp_path / "b")
        assert result.exit_code == 2, (function, result.stderr)
        assert_one_line_error(result.stderr, f"{calib}:{function}", fragment)
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- paths outside the bundle


def _rewrite(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _entry(path: Path, name: str) -> dict:
    data = path.read_bytes()
    return {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


@pytest.mark.parametrize("case", ["dotdot", "absolute", "artifact-outside", "symlink-out", "fifo"])
def test_verify_and_run_py_refuse_paths_outside_the_bundle(cli, tmp_path, digits_bundle, case):
    bundle = tmp_path / "b"
    shutil.copytree(digits_bundle, bundle)
    secret = tmp_path / "secret.txt"
    secret.write_text("not in the bundle")
    if case == "dotdot":
        _rewrite(bundle, lambda m: m["files"].append(_entry(secret, "../secret.txt")))
    elif case == "absolute":
        _rewrite(bundle, lambda m: m["files"].append(_entry(secret, str(secret))))
    elif case == "artifact-outside":
        shutil.copyfile(bundle / "model.ort.onnx", tmp_path / "outside.onnx")
        _rewrite(bundle, lambda m: m["backend"].update(artifact="../outside.onnx"))
    elif case == "symlink-out":
        (bundle / "linked.txt").symlink_to(secret)
        _rewrite(bundle, lambda m: m["files"].append(_entry(secret, "linked.txt")))
    else:
        os.mkfifo(bundle / "pipe")
    result = cli("verify", bundle, "--json")
    assert result.exit_code == 1, result.stdout + result.stderr
    problems = " ".join(json.loads(result.stdout)["problems"])
    expected = {"dotdot": "not a plain relative path", "absolute": "not a plain relative path",
                "artifact-outside": "not a plain relative path", "symlink-out": "resolves outside the bundle",
                "fifo": "pipe: not listed"}[case]
    assert expected in problems, problems
    device = run_on_device(bundle, "--verify", "--benchmark", "--runs", "1")
    assert device.returncode in (1, 2) and "Traceback" not in device.stderr
    assert "latenc" not in device.stdout


# ---------------------------------------------------------------- outputs that would clobber


def test_out_inside_a_bundle_or_over_an_input_is_refused(cli, tmp_path, digits_onnx):
    bundle = tmp_path / "b"
    assert cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--out", bundle).exit_code == 0
    inner = cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--out", bundle / "inner")
    assert inner.exit_code == 2
    assert_one_line_error(inner.stderr, "inside", "edgepipe bundle")
    assert verify_bundle(bundle) == []
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(digits_onnx, models / "m.onnx")
    (models / "manifest.json").write_text(json.dumps({"schema": "edgepipe.bundle/1"}))  # looks like ours
    clobber = cli("build", models / "m.onnx", "--target", "onnxruntime-cpu", "--out", models, "--force")
    assert clobber.exit_code == 2
    assert_one_line_error(clobber.stderr, "holds", "m.onnx")
    assert (models / "m.onnx").is_file()
    for out in (".", ""):
        here = subprocess.run([sys.executable, "-m", "edgepipe", "build", str(digits_onnx), "--out", out],
                              cwd=tmp_path, capture_output=True, text=True, check=False)
        assert here.returncode == 2 and "give a new folder" in here.stderr, here.stderr


def test_two_builds_to_one_new_output_without_force_one_wins(tmp_path):
    out = tmp_path / "b"
    command = [sys.executable, "-m", "edgepipe", "build", RESNET18, "--target", "onnxruntime-cpu",
               "--out", str(out)]
    processes = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2).strip().splitlines()[-1]
    # Usually both pass the early check and race to publish; on a slow start the loser stops early.
    assert "appeared while this build ran" in loser or "already exists" in loser, loser
    assert verify_bundle(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "b.build"]


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out = tmp_path / "resnet18-cpu"
    process = subprocess.Popen([sys.executable, "-m", "edgepipe", "build", RESNET18, "--out", str(out)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".resnet18-cpu.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp_path.glob(".resnet18-cpu.*.tmp")), "the build never started staging"
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert any("terminated (SIGTERM)" in line for line in stderr.splitlines()), stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- one line, the right exit code


def test_malformed_manifests_and_profiles_are_bad_input(cli, tmp_path, digits_bundle):
    for edit, fragment in ((lambda m: m.pop("files"), "key 'files'"),
                           (lambda m: m.update(files="everything"), "key 'files'"),
                           (lambda m: m.pop("backend"), "key 'backend'"),
                           (lambda m: m["backend"].update(engine=None), "backend.engine")):
        bundle = tmp_path / "b"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(digits_bundle, bundle)
        _rewrite(bundle, edit)
        result = cli("verify", bundle)
        assert result.exit_code == 2, (fragment, result.stderr)
        assert_one_line_error(result.stderr, fragment)
    profile = tmp_path / "p.json"
    assert cli("profile", digits_bundle, "--runs", "12", "--out", profile).exit_code == 0
    data = json.loads(profile.read_text())
    data["latency_ms"]["samples"] = "fast"
    (tmp_path / "q.json").write_text(json.dumps(data))
    assert cli("compare", profile, tmp_path / "q.json").exit_code == 2


def test_a_deep_extends_chain_is_one_line(cli, tmp_path):
    for index in range(1500):
        parent = f'extends = "p{index + 1}.toml"\n' if index < 1499 else ""
        (tmp_path / f"p{index}.toml").write_text(f'name = "p{index}"\ndescription = "d"\n{parent}')
    result = cli("build", DIGITS, "--profile", tmp_path / "p0.toml", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "deeper than")


def test_run_py_bad_arguments_are_one_line(tmp_path, digits_bundle):
    (tmp_path / "junk.npz").write_text("not a zip")
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    x = tmp_path / "x.npy"
    for args in (["--input", tmp_path / "junk.npz"], ["--input", x, "--output", tmp_path / "folder"],
                 ["--input", x, "--output", "/proc/no/such/place.npz"], ["--threads", "3000"]):
        done = run_on_device(digits_bundle, *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) <= 2, done.stderr  # argparse: usage + one line
    named = run_on_device(digits_bundle, "--input", tmp_path / "x.npy", "--output", tmp_path / "out")
    assert named.returncode == 0 and (tmp_path / "out.npz").is_file()


def test_messages_say_what_happened(cli, tmp_path, digits_onnx):
    calib = tmp_path / "calib.py"
    calib.write_text("def samples(count):\n    return []\n")  # needs an argument it will not get
    result = cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--calib", f"{calib}:samples",
                 "--out", tmp_path / "b")
    assert_one_line_error(result.stderr, "TypeError", "count")
    device = cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--calib", "/dev/zero",
                 "--out", tmp_path / "b")
    assert device.exit_code == 2
    assert_one_line_error(device.stderr, "/dev/zero", "neither a file nor a folder")
    np.savez(tmp_path / "e.npz", input=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    unused = cli("build", digits_onnx, "--target", "onnxruntime-cpu", "--eval", tmp_path / "e.npz",
                 "--out", tmp_path / "b")
    assert unused.exit_code == 0 and "--eval is not used" in unused.stderr
