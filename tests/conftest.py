"""Shared fixtures: real models, real runtimes, built once per session where read-only."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgepipe.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "models"
DIGITS = f"{EXAMPLES / 'digits_cnn.py'}:digits_cnn"
RESNET18 = f"{EXAMPLES / 'resnet.py'}:resnet18"
MINILM_TINY = f"{EXAMPLES / 'transformer.py'}:minilm_tiny"


def import_example(name: str, folder: Path = EXAMPLES):
    """Import an example module (examples/models/NAME.py or examples/NAME.py) by file."""
    import importlib

    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def _cuda_available() -> bool:
    try:
        import onnxruntime

        return "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA-enabled onnxruntime/TensorRT")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli():
    """Run `edgepipe ARGS` in-process, stdout and stderr kept apart."""
    runner = CliRunner()

    def invoke(*args: str) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


def run_edgepipe(*args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a fresh process."""
    return subprocess.run([sys.executable, "-m", "edgepipe", *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, check=False, timeout=600)


def portable_of(bundle: Path) -> Path:
    """The portable ONNX a bundle was lowered from: in the bundle where the device needs it
    (TensorRT, --portable), else in the build folder beside it."""
    shipped = bundle / "model.onnx"
    return shipped if shipped.is_file() else bundle.with_name(bundle.name + ".build") / "model.onnx"


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{stderr}"
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle of the (untrained) digits CNN, shared by tests that only read it."""
    from edgepipe import api

    out = tmp_path_factory.mktemp("bundles") / "digits-onnxruntime-cpu"
    api.build(DIGITS, target="onnxruntime-cpu", out=out)
    return out


@pytest.fixture(scope="session")
def digits_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits CNN as a plain ONNX file, as a user would bring one."""
    import torch

    model, examples = import_example("digits_cnn").digits_cnn()
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    torch.onnx.export(model, (examples["input"],), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory) -> dict[str, Path | float]:
    """The digits CNN trained in-test, its weights, and held-out digits with labels."""
    import numpy as np
    import torch

    folder = tmp_path_factory.mktemp("digits")
    train = import_example("train_digits", EXAMPLES.parent)
    model, x_test, y_test, accuracy = train.train(epochs=10)
    torch.save(model.state_dict(), folder / "digits_cnn.pt")
    np.savez(folder / "test.npz", input=x_test, labels=y_test)
    x_train, y_train, _, _ = train.load_digits_split(0)
    np.savez(folder / "train.npz", input=x_train, labels=y_train)
    return {"weights": folder / "digits_cnn.pt", "test": folder / "test.npz", "train": folder / "train.npz",
            "accuracy": accuracy,
            "folder": folder}


def hostile_digits(model):
    """The trained digits CNN with one activation channel scaled up 2000x and the next
    layer's weights for it scaled down to match: the same function in float, but that
    channel's outliers set the per-tensor int8 range and crush every other channel."""
    import torch

    conv2, bn = model.features[3], model.features[1]
    with torch.no_grad():
        bn.weight[0] *= 2000
        bn.bias[0] *= 2000
        conv2.weight[:, 0] /= 2000
    return model


@pytest.fixture(scope="session")
def hostile_onnx(trained_digits, tmp_path_factory) -> Path:
    import torch

    model = import_example("digits_cnn").DigitsCNN()
    model.load_state_dict(torch.load(trained_digits["weights"]))
    hostile = hostile_digits(model.eval())
    path = tmp_path_factory.mktemp("hostile") / "hostile.onnx"
    torch.onnx.export(hostile, (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


@pytest.fixture(scope="session")
def digits_trained_onnx(trained_digits, tmp_path_factory) -> Path:
    """The trained digits CNN as a plain ONNX file: an ONNX-only source with real accuracy."""
    import torch

    model = import_example("digits_cnn").DigitsCNN()
    model.load_state_dict(torch.load(trained_digits["weights"]))
    path = tmp_path_factory.mktemp("digits-trained") / "digits.onnx"
    torch.onnx.export(model.eval(), (torch.rand(1, 1, 8, 8),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


# ---------------------------------------------------------------- a real sshd on 127.0.0.1

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on a loopback port that only accepts this test's key."""
    if SSHD is None:
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password", "StrictModes no",
        "UsePAM no", f"PidFile {folder / 'sshd.pid'}", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if server.poll() is not None:
                pytest.skip(f"sshd could not start: {server.stderr.read()[-300:]}")
            time.sleep(0.1)
    else:
        server.kill()
        pytest.skip("sshd did not listen within 10 s")
    options = ["--port", str(port), "--identity", str(folder / "client_key"),
               "--ssh-option", f"UserKnownHostsFile={folder / 'known_hosts'}",
               "--ssh-option", "StrictHostKeyChecking=accept-new"]
    yield {"host": f"{getpass.getuser()}@127.0.0.1", "options": options, "folder": folder, "port": port}
    server.terminate()
    server.wait(timeout=10)


def _nonstandard_constant(token: str) -> None:
    raise ValueError(f"non-standard JSON token {token}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every JSON file the suite's builds, profiles and matrices wrote must parse in a strict parser
    (no NaN/Infinity tokens, which JavaScript, Go and serde refuse). Files written malformed on
    purpose carry `.hostile.` in their name; unparseable files are some test's bad input."""
    import json

    factory = getattr(session.config, "_tmp_path_factory", None)
    try:
        base = factory.getbasetemp() if factory is not None else None
    except (OSError, ValueError):
        base = None
    if base is None or not base.is_dir():
        return
    offenders, checked = [], 0
    for path in base.rglob("*.json"):
        if ".hostile." in path.name or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
            json.loads(text)  # syntactically broken on purpose: not ours to judge
        except (OSError, ValueError):
            continue
        checked += 1
        try:
            json.loads(text, parse_constant=_nonstandard_constant)
        except ValueError as exc:
            offenders.append(f"{path}: {exc}")
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if offenders:
        if reporter is not None:
            reporter.write_line(f"strict JSON: {len(offenders)} of {checked} JSON files written by the suite "
                                f"hold NaN/Infinity:", red=True)
            for line in offenders[:20]:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = 1
    elif reporter is not None and checked:
        reporter.write_line(f"strict JSON: all {checked} JSON files written by the suite parse strictly")
