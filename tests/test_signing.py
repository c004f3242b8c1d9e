"""Signed bundles: keygen, build --sign, verify --pubkey, and every tamper case caught precisely."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DIGITS, assert_one_line_error
from tests.test_run_py import run_on_device

pytest.importorskip("cryptography")


@pytest.fixture(scope="module")
def signed(tmp_path_factory) -> dict[str, Path]:
    from typer.testing import CliRunner

    from edgepipe.cli import app

    folder = tmp_path_factory.mktemp("signed")
    runner = CliRunner()
    for args in (["keygen", str(folder / "release")], ["keygen", str(folder / "other")],
                 ["build", DIGITS, "--target", "onnxruntime-cpu", "--sign", str(folder / "release"),
                  "--out", str(folder / "bundle")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return {"bundle": folder / "bundle", "key": folder / "release", "pub": folder / "release.pub",
            "other_pub": folder / "other.pub"}


@pytest.fixture
def flashed(signed, tmp_path) -> Path:
    copy = tmp_path / "flashed"
    shutil.copytree(signed["bundle"], copy)
    return copy


def test_keygen_writes_a_private_key_only_its_owner_reads(signed, cli):
    assert signed["key"].stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PUBLIC KEY" in signed["pub"].read_bytes()
    again = cli("keygen", signed["key"])
    assert again.exit_code == 2
    assert_one_line_error(again.stderr, "exists", "--force")


def test_signed_bundle_verifies_on_host_and_device(signed, cli):
    result = cli("verify", signed["bundle"], "--pubkey", signed["pub"])
    assert result.exit_code == 0, result.stderr
    assert "signature is valid" in result.stdout
    device = run_on_device(signed["bundle"], "--verify", "--pubkey", signed["pub"])
    assert device.returncode == 0, device.stderr
    record = json.loads((signed["bundle"] / "manifest.sig").read_text())
    assert record["algorithm"] == "ed25519" and len(base64.b64decode(record["signature"])) == 64
    manifest = json.loads((signed["bundle"] / "manifest.json").read_text())
    assert "manifest.sig" not in {entry["path"] for entry in manifest["files"]}


def _flip_model_byte(bundle: Path) -> None:
    model = bundle / "model.ort.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


def _add_file(bundle: Path) -> None:
    (bundle / "edgepipe_runtime" / "energy" / "backdoor.py").write_text("print('hi')\n")


def _edit_manifest(bundle: Path) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["model"]["name"] = "not-the-released-model"
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _append_to_manifest(bundle: Path) -> None:
    with (bundle / "manifest.json").open("a") as handle:
        handle.write("garbage")


def _replace_signature(bundle: Path) -> None:
    path = bundle / "manifest.sig"
    record = json.loads(path.read_text())
    record["signature"] = base64.b64encode(bytes(64)).decode()
    path.write_text(json.dumps(record))


def _remove_signature(bundle: Path) -> None:
    (bundle / "manifest.sig").unlink()


def _garble_signature(bundle: Path) -> None:
    (bundle / "manifest.sig").write_text("not json")


@pytest.mark.parametrize(("tamper", "message"), [
    (_flip_model_byte, "model.ort.onnx: sha256 differs from the manifest"),
    (_add_file, "edgepipe_runtime/energy/backdoor.py: not listed in the manifest"),
    (_edit_manifest, "manifest.json: does not match its signature"),
    (_append_to_manifest, "manifest.json: does not match its signature"),
    (_replace_signature, "manifest.json: does not match its signature"),
    (_remove_signature, "manifest.sig: missing: the bundle is not signed"),
    (_garble_signature, "manifest.sig: not a signature record"),
])
def test_every_tamper_is_caught_with_a_precise_message(flashed, signed, cli, tamper, message):
    tamper(flashed)
    host = cli("verify", flashed, "--pubkey", signed["pub"], "--json")
    assert host.exit_code == 1, host.stdout + host.stderr
    assert any(p.startswith(message) for p in json.loads(host.stdout)["problems"]), host.stdout
    device = run_on_device(flashed, "--pubkey", signed["pub"], "--benchmark", "--runs", "1")
    assert device.returncode == 1  # refuses to load the model at all
    assert message in device.stderr and "latenc" not in device.stdout


def test_a_bundle_signed_by_another_key_is_refused(signed, cli):
    result = cli("verify", signed["bundle"], "--pubkey", signed["other_pub"])
    assert result.exit_code == 1
    assert "signed by key" in result.stderr and "not by" in result.stderr


def test_run_py_verifies_when_the_key_is_configured_in_the_environment(flashed, signed):
    import os

    env = {**os.environ, "EDGEPIPE_PUBKEY": str(signed["pub"])}
    ok = subprocess.run([sys.executable, str(flashed / "run.py"), "--runs", "1", "--benchmark", "--json"],
                        capture_output=True, text=True, env=env, check=False)
    assert ok.returncode == 0, ok.stderr
    _flip_model_byte(flashed)
    bad = subprocess.run([sys.executable, str(flashed / "run.py"), "--runs", "1", "--benchmark"],
                         capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and "sha256 differs" in bad.stderr


@pytest.mark.parametrize("key", ["missing", "public", "garbage", "rsa"])
def test_bad_signing_key_fails_before_building(cli, tmp_path, signed, key):
    path = {"missing": tmp_path / "nope", "public": signed["pub"], "garbage": tmp_path / "garbage",
            "rsa": tmp_path / "rsa"}[key]
    if key == "garbage":
        path.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    if key == "rsa":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path.write_bytes(pem)
    out = tmp_path / "bundle"
    result = cli("build", DIGITS, "--sign", path, "--out", out)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--sign")
    assert not out.exists()


@pytest.mark.slow
def test_signed_bundle_verifies_in_a_fresh_venv_with_only_run_py_dependencies(signed, tmp_path):
    import onnxruntime

    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "numpy", "cryptography",
                              f"onnxruntime=={onnxruntime.__version__}"],
                             capture_output=True, text=True, check=False, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    result = subprocess.run([python, str(signed["bundle"] / "run.py"), "--verify", "--pubkey", signed["pub"]],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "match the manifest and its signature" in result.stdout


def test_run_py_reports_a_removed_manifest_instead_of_crashing(flashed, signed):
    (flashed / "manifest.json").unlink()
    device = run_on_device(flashed, "--pubkey", signed["pub"], "--verify")
    assert device.returncode == 1
    assert "manifest.json: missing" in device.stderr and "Traceback" not in device.stderr
