"""Encrypted bundles: model files AES-256-GCM at rest, decrypted by run.py into memory only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DIGITS, assert_one_line_error

pytest.importorskip("cryptography")



def _run(bundle: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "run.py"), *map(str, args)], capture_output=True,
                          text=True, check=False, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    from edgepipe.encryption import generate_key

    folder = tmp_path_factory.mktemp("keys")
    return {"key": generate_key(folder / "model.key"), "other": generate_key(folder / "other.key")}


@pytest.fixture(scope="module", params=["onnxruntime-cpu", "openvino-cpu"])
def bundles(request, keys, tmp_path_factory) -> dict[str, Path]:
    from typer.testing import CliRunner

    from edgepipe.cli import app

    if request.param == "openvino-cpu":
        pytest.importorskip("openvino")
    folder = tmp_path_factory.mktemp(f"enc-{request.param}")
    runner = CliRunner()
    for name, extra in (("plain", []), ("encrypted", ["--encrypt-key", str(keys["key"])])):
        # --portable: a second encrypted file to swap in (the portable model.onnx beside the artifact)
        result = runner.invoke(app, ["build", DIGITS, "--target", request.param, "--portable", "--out",
                                     str(folder / name), *extra])
        assert result.exit_code == 0, result.output
    return {"plain": folder / "plain", "encrypted": folder / "encrypted", "target": request.param}


def test_model_files_are_encrypted_and_run_from_memory(bundles, keys, tmp_path):
    plain, encrypted = bundles["plain"], bundles["encrypted"]
    assert not [p.name for p in encrypted.iterdir() if p.name.startswith("model.") and p.suffix != ".enc"]
    manifest = json.loads((encrypted / "manifest.json").read_text())
    assert manifest["encryption"]["algorithm"] == "AES-256-GCM"
    assert keys["key"].read_text().strip() not in (encrypted / "manifest.json").read_text()
    weights = max((p for p in plain.glob("model.*")), key=lambda p: p.stat().st_size).read_bytes()
    probe = weights[len(weights) // 2: len(weights) // 2 + 64]
    assert all(probe not in p.read_bytes() for p in encrypted.rglob("*") if p.is_file())
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((1, 1, 8, 8), np.float32))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    got = _run(encrypted, "--input", tmp_path / "x.npy", "--output", tmp_path / "enc.npz", "--key-file",
               keys["key"], env={"TMPDIR": str(scratch)})
    assert got.returncode == 0, got.stderr
    # Nothing decrypted to a temporary file (onnxruntime's import leaves a 51-byte `.ses` marker there).
    leftovers = [p for p in scratch.rglob("*") if p.is_file()]
    assert all(p.stat().st_size < 1024 and probe not in p.read_bytes() for p in leftovers), leftovers
    assert _run(plain, "--input", tmp_path / "x.npy", "--output", tmp_path / "plain.npz").returncode == 0
    for name, value in np.load(tmp_path / "plain.npz").items():
        np.testing.assert_array_equal(np.load(tmp_path / "enc.npz")[name], value)
    assert _run(encrypted, "--verify", "--benchmark", "--runs", "2",
                env={"EDGEPIPE_MODEL_KEY": str(keys["key"])}).returncode == 0


def test_without_or_with_the_wrong_key_it_says_so(bundles, keys):
    missing = _run(bundles["encrypted"], "--benchmark", "--runs", "1")
    assert missing.returncode == 2
    assert_one_line_error(missing.stderr, "is encrypted", "--key-file")
    wrong = _run(bundles["encrypted"], "--benchmark", "--runs", "1", "--key-file", keys["other"])
    assert wrong.returncode == 2
    assert_one_line_error(wrong.stderr, "encrypted with key", "not with the given key")


def test_tampered_or_swapped_ciphertext_fails_authentication(bundles, keys, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundles["encrypted"], copy)
    artifact = json.loads((copy / "manifest.json").read_text())["backend"]["artifact"] + ".enc"
    data = bytearray((copy / artifact).read_bytes())
    data[-40] ^= 0x01
    (copy / artifact).write_bytes(bytes(data))
    result = _run(copy, "--benchmark", "--runs", "1", "--key-file", keys["key"])
    assert result.returncode == 1
    assert_one_line_error(result.stderr, "authentication failed")
    shutil.copyfile(copy / "model.onnx.enc", copy / artifact)  # right key, wrong file
    result = _run(copy, "--benchmark", "--runs", "1", "--key-file", keys["key"])
    assert result.returncode == 1 and "authentication failed" in result.stderr


def test_encrypt_without_a_usable_key_is_refused_before_building(cli, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEPIPE_MODEL_KEY", raising=False)
    out = tmp_path / "bundle"
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--encrypt", "--out", out)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "--encrypt needs a key")
    (tmp_path / "short.key").write_text("abcd\n")
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--encrypt-key", tmp_path / "short.key",
                 "--out", out)
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "not an AES-256 key")
    assert not out.exists()


def test_signed_and_encrypted_bundle_verifies(cli, tmp_path, keys):
    out = tmp_path / "bundle"
    assert cli("keygen", tmp_path / "sign").exit_code == 0
    result = cli("build", DIGITS, "--target", "onnxruntime-cpu", "--encrypt-key", keys["key"], "--sign",
                 tmp_path / "sign", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert cli("verify", out, "--pubkey", tmp_path / "sign.pub").exit_code == 0
    ran = _run(out, "--pubkey", tmp_path / "sign.pub", "--key-file", keys["key"], "--benchmark",
               "--runs", "1")
    assert ran.returncode == 0, ran.stderr
