"""Every bad input: one line on stderr, the documented exit code, nothing left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _make(kind: str, tmp_path: Path, digits_onnx: Path) -> str:
    """Write the bad model of `kind` into tmp_path/in and return its spec."""
    src = tmp_path / "in"
    src.mkdir()
    good = digits_onnx.read_bytes()
    if kind == "truncated":
        (src / "m.onnx").write_bytes(good[: len(good) // 3])
    elif kind == "corrupt":
        (src / "m.onnx").write_bytes(good[:100] + bytes(range(256)) * 4 + good[1200:])
    elif kind == "not_a_model":
        (src / "m.onnx").write_text("name,age\nada,36\n")
    elif kind == "empty":
        (src / "m.onnx").write_bytes(b"")
    elif kind == "unknown_format":
        (src / "m.tflite").write_text("not really")
        return str(src / "m.tflite")
    elif kind == "missing":
        pass
    elif kind == "factory_raises":
        (src / "f.py").write_text("def model():\n    raise ValueError('no weights here')\n")
        return f"{src / 'f.py'}:model"
    elif kind == "factory_missing":
        (src / "f.py").write_text("def other():\n    pass\n")
        return f"{src / 'f.py'}:model"
    elif kind == "factory_not_a_module":
        (src / "f.py").write_text("def model():\n    return 42\n")
        return f"{src / 'f.py'}:model"
    elif kind == "unsupported_op":
        import onnx
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.example", 1)])
        onnx.save(model, str(src / "m.onnx"))
    elif kind == "external_data_escape":
        import onnx

        model = onnx.load(str(digits_onnx))
        onnx.save_model(model, str(src / "m.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
        model = onnx.load(str(src / "m.onnx"), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../../../../etc/passwd"
        onnx.save(model, str(src / "m.onnx"))
    return str(src / "m.onnx")


@pytest.mark.parametrize(("kind", "code", "fragments"), [
    ("truncated", 2, ["not a valid ONNX model"]),
    ("corrupt", 2, ["m.onnx"]),
    ("not_a_model", 2, ["not a valid ONNX model"]),
    ("empty", 2, ["empty file"]),
    ("missing", 2, ["no such file"]),
    ("unknown_format", 2, ["unrecognised model format"]),
    ("factory_raises", 2, ["raised ValueError", "no weights here"]),
    ("factory_missing", 2, ["has no function 'model'"]),
    ("factory_not_a_module", 2, ["returned int", "nn.Module"]),
    ("unsupported_op", 2, ["Frobnicate", "not supported by onnxruntime"]),
    ("external_data_escape", 2, ["points outside the model's folder", "refused"]),
])
def test_bad_model(cli, tmp_path, digits_onnx, kind, code, fragments):
    spec = _make(kind, tmp_path, digits_onnx)
    out_root = tmp_path / "out"
    result = cli("build", spec, "--out", out_root / "bundle")
    assert result.exit_code == code, result.stderr
    assert_one_line_error(result.stderr, *fragments)
    assert _leftovers(out_root) == []  # not even the parent folder it would have made


@pytest.mark.parametrize(("args", "fragments"), [
    (["--target", "tpu9000"], ["unknown target 'tpu9000'"]),
    (["--profile", "int3"], ["unknown profile 'int3'"]),
    (["--input", "input:1x3"], ["2 dimensions given"]),
    (["--input", "input:1x1x9x9"], ["does not fit"]),
    (["--input", "pixels:1x1x8x8"], ["model's inputs are: input"]),
    (["--input", "input=1x1x8x8"], ["expected NAME:DIMxDIMx"]),
    (["--calib", "nowhere.npz"], ["no such file or directory"]),
])
def test_bad_options(cli, tmp_path, digits_onnx, args, fragments):
    result = cli("build", digits_onnx, "--out", tmp_path / "out" / "b", *args)
    assert result.exit_code == 2, result.stderr
    assert_one_line_error(result.stderr, *fragments)
    assert _leftovers(tmp_path / "out") == []


def test_unknown_key_in_a_user_profile(cli, tmp_path, digits_onnx):
    profile = tmp_path / "p.toml"
    profile.write_text('name = "p"\ndescription = "d"\n[export]\nopset_version = 17\n')
    result = cli("build", digits_onnx, "--profile", profile, "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, str(profile), "unknown key 'export.opset_version'")


@pytest.mark.parametrize("problem", ["empty_folder", "wrong_shape", "wrong_dtype", "wrong_name"])
def test_bad_calibration_samples(cli, tmp_path, digits_onnx, problem):
    import numpy as np

    calib = tmp_path / "calib"
    calib.mkdir()
    if problem == "wrong_shape":
        np.save(calib / "a.npy", np.zeros((3, 8, 8), np.float32))
    elif problem == "wrong_dtype":
        np.save(calib / "a.npy", np.zeros((1, 1, 8, 8), np.float64))
    elif problem == "wrong_name":
        np.savez(calib / "a.npz", image=np.zeros((1, 1, 8, 8), np.float32))
    result = cli("build", digits_onnx, "--calib", calib, "--out", tmp_path / "b")
    assert result.exit_code == 2
    expected = {"empty_folder": "holds no .npy, .npz or image files", "wrong_shape": "has shape [3, 8, 8]",
                "wrong_dtype": "dtype float64", "wrong_name": "no array named 'input'"}[problem]
    assert_one_line_error(result.stderr, expected)
    assert not (tmp_path / "b").exists()


def test_unwritable_output_location(cli, tmp_path, digits_onnx):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = cli("build", digits_onnx, "--out", blocker / "bundle")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "cannot write to", "is not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(cli, tmp_path, digits_onnx):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = cli("build", digits_onnx, "--out", locked / "bundle")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "cannot write to")


def test_read_only_file_system(cli, digits_onnx):
    result = cli("build", digits_onnx, "--out", "/proc/edgepipe-bundle")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "cannot write to /proc")


def test_debug_shows_the_traceback(cli, tmp_path):
    from edgepipe.errors import BadInputError

    with pytest.raises(BadInputError):
        cli("build", tmp_path / "missing.onnx", "--debug")


def test_bad_bundle_for_verify_and_profile(cli, tmp_path):
    for command in ("verify", "profile", "inspect"):
        result = cli(command, tmp_path)
        assert result.exit_code == 2
        assert_one_line_error(result.stderr, "not an edgepipe bundle")


def test_factory_seed_makes_missing_input_shape_an_error_not_a_crash(cli, tmp_path):
    (tmp_path / "f.py").write_text(
        "import torch\ndef model():\n    return torch.nn.Linear(4, 2)\n")
    result = cli("build", f"{tmp_path / 'f.py'}:model", "--out", tmp_path / "b")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "no example inputs", "--input")
    ok = cli("build", f"{tmp_path / 'f.py'}:model", "--input", "input:1x4", "--out", tmp_path / "b")
    assert ok.exit_code == 0, ok.stderr




@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB file system, to fill up for real (needs mount rights: root, as in CI)."""
    import subprocess

    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_leaves_nothing(cli, tiny_disk):
    from tests.conftest import MINILM_TINY

    result = cli("build", MINILM_TINY, "--out", tiny_disk / "bundle")  # needs ~3 MiB
    assert result.exit_code == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and ("no space left" in error[0].lower()), result.stderr
    assert list(tiny_disk.iterdir()) == []
