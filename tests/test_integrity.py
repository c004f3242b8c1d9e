"""Bundle integrity: the host reads a bundle as data only, the flash image holds one copy of the
model, and the build cache is checked before a bundle is reused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIGITS, portable_of

pytest.importorskip("cryptography")


def _hostile(bundle: Path, marker: Path) -> None:
    """Every .py file of the bundle (and a trt_engine.py, as old TensorRT bundles carried) writes
    `marker` when imported; the manifest is rewritten to match, so only the signature can tell."""
    from edgepipe.manifest import file_entries, write_json

    line = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n"
    for path in [*bundle.rglob("*.py"), bundle / "trt_engine.py"]:
        path.write_text(line + (path.read_text() if path.exists() else ""))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = file_entries(bundle)
    write_json(bundle / "manifest.json", manifest)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from edgepipe.signing import generate_keypair

    folder = tmp_path_factory.mktemp("keys")
    private, public = generate_keypair(folder / "release")
    _, other = generate_keypair(folder / "other")
    return {"private": private, "public": public, "other": other}


@pytest.fixture
def hostile(tmp_path, digits_bundle, keys) -> dict[str, Path]:
    """Two hostile copies of a real bundle: one re-signed with the release key, one unsigned."""
    from edgepipe.signing import load_private_key, sign_bundle

    marker = tmp_path / "marker"
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    for bundle in (signed, unsigned):
        shutil.copytree(digits_bundle, bundle)
        _hostile(bundle, marker)
    sign_bundle(signed, load_private_key(keys["private"]))
    return {"signed": signed, "unsigned": unsigned, "marker": marker}


def test_verify_never_runs_code_from_the_bundle(cli, hostile, keys):
    marker = hostile["marker"]
    assert cli("verify", hostile["unsigned"]).exit_code == 0  # consistent hashes: data only
    assert cli("verify", hostile["signed"], "--pubkey", keys["public"]).exit_code == 0
    wrong = cli("verify", hostile["signed"], "--pubkey", keys["other"])
    assert wrong.exit_code == 1 and "signed by key" in wrong.stdout + wrong.stderr
    missing = cli("verify", hostile["unsigned"], "--pubkey", keys["public"])
    assert missing.exit_code == 1 and "not signed" in missing.stdout + missing.stderr
    assert not marker.exists()


def test_profile_runs_nothing_from_the_bundle_and_checks_the_signature_first(cli, hostile, keys, tmp_path):
    marker = hostile["marker"]
    for bundle, key in ((hostile["unsigned"], keys["public"]), (hostile["signed"], keys["other"])):
        refused = cli("profile", bundle, "--pubkey", key, "--runs", "2", "--out", tmp_path / "p.json")
        assert refused.exit_code == 1, refused.stderr
        assert not (tmp_path / "p.json").exists()
    profiled = cli("profile", hostile["signed"], "--pubkey", keys["public"], "--runs", "3", "--warmup", "0",
                   "--out", tmp_path / "p.json")
    assert profiled.exit_code == 0, profiled.stderr  # the installed runtime timed the bundle's model
    assert json.loads((tmp_path / "p.json").read_text())["latency_ms"]["samples"]
    assert not marker.exists()


def test_tensorrt_engine_compatibility_is_read_as_data(cli, tmp_path):
    """A TensorRT bundle with an engine and its build record: verify reads model.engine.json, and
    imports nothing of the bundle (whose TensorRT module would leave a marker)."""
    out, marker = tmp_path / "jetson", tmp_path / "marker"
    assert cli("build", DIGITS, "--target", "jetson", "--out", out).exit_code == 0
    _hostile(out, marker)
    (out / "model.engine").write_bytes(b"\0" * 64)  # device-written files: accepted unlisted
    (out / "model.engine.json").write_text(json.dumps({"tensorrt": "8.5.2", "compute_capability": "7.2",
                                                       "plan": {}}))
    result = cli("verify", out)
    assert result.exit_code == 0, result.stderr  # this host has no TensorRT: nothing to compare
    assert not marker.exists()


def test_flash_image_holds_one_copy_of_the_model(cli, tmp_path):
    pytest.importorskip("openvino")
    plain, portable = tmp_path / "plain", tmp_path / "portable"
    assert cli("build", DIGITS, "--target", "openvino-cpu", "--out", plain).exit_code == 0
    assert cli("build", DIGITS, "--target", "openvino-cpu", "--portable", "--out", portable).exit_code == 0
    assert not (plain / "model.onnx").exists()
    assert (tmp_path / "plain.build" / "model.onnx").is_file()  # kept for rebuilds, outside the image
    assert json.loads((plain / "manifest.json").read_text())["portable_model"] is None
    assert (portable / "model.onnx").is_file()
    assert json.loads((portable / "manifest.json").read_text())["portable_model"] == "model.onnx"
    # A target can ask for it too.
    target = tmp_path / "ov-portable.toml"
    from edgepipe.config import builtin_dir

    target.write_text((builtin_dir("targets") / "openvino-cpu.toml").read_text()
                      .replace('name = "openvino-cpu"', 'name = "ov-portable"')
                      + "\n[bundle]\nportable = true\n")
    by_target = tmp_path / "by-target"
    assert cli("build", DIGITS, "--target", target, "--out", by_target).exit_code == 0
    assert (by_target / "model.onnx").is_file()
    # TensorRT builds its engine on the device from the ONNX: always shipped.
    jetson = tmp_path / "jetson"
    assert cli("build", DIGITS, "--target", "jetson", "--out", jetson).exit_code == 0
    assert (jetson / "model.onnx").is_file() and portable_of(jetson) == jetson / "model.onnx"


def test_f16_ir_stores_f16_weights(cli, tmp_path, trained_digits):
    """Trained weights and real digits: an untrained model's near-tied logits flip top-1 under
    bf16 (what OpenVINO runs for f16 on an AVX-512 BF16 CPU) on 1 of 8 random samples."""
    ov = pytest.importorskip("openvino")
    sizes = {}
    for profile in ("fp32", "fp16", "bf16"):
        out = tmp_path / profile
        built = cli("build", DIGITS, "--weights", trained_digits["weights"], "--calib",
                    trained_digits["test"], "--target", "openvino-cpu", "--profile", profile, "--out", out)
        assert built.exit_code == 0, built.stderr
        sizes[profile] = (out / "model.bin").stat().st_size
        types = {op.get_element_type().get_type_name() for op in ov.Core().read_model(str(out / "model.xml"))
                 .get_ops() if op.get_type_name() == "Constant" and op.get_output_size()
                 and len(op.get_output_shape(0)) >= 2}
        assert types == ({"f32"} if profile == "fp32" else {"f16"}), (profile, types)
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["bf16"] < 0.6 * sizes["fp32"]


def test_a_corrupt_cache_entry_is_rebuilt_never_served(tmp_path, digits_onnx):
    pytest.importorskip("ray")
    from edgepipe.matrix.cache import BuildCache, tool_fingerprint
    from edgepipe.matrix.orchestrate import _job
    from edgepipe.matrix.spec import load_matrix
    from edgepipe.matrix.tasks import build_cell
    from tests.test_matrix import write_matrix

    path = write_matrix(tmp_path, digits_onnx, targets=("onnxruntime-cpu",), profiles=("fp32",))
    matrix = load_matrix(path)
    cache = BuildCache(tmp_path / "cache")
    job = _job(matrix, matrix.cells[1], cache, tool_fingerprint())
    first = build_cell(job)
    assert first["status"] == "built"
    bundle = Path(first["bundle"])
    model = bundle / "model.ort.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit on a shared mount
    model.write_bytes(bytes(data))
    again = build_cell(job)
    assert again["status"] == "built" and not again["cache_hit"]
    assert "failed verification" in again["cache_problem"] and "model.ort.onnx" in again["cache_problem"]
    from edgepipe.manifest import verify_bundle

    assert verify_bundle(Path(again["bundle"])) == []
    assert build_cell(job)["status"] == "cached"  # the rebuilt entry is served from then on
    assert not np.array_equal(np.frombuffer(bytes(data), np.uint8),
                              np.frombuffer(model.read_bytes(), np.uint8))
