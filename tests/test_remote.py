"""`edgepipe profile --host`: against a real OpenSSH server on 127.0.0.1 with a throwaway key."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error

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
    yield {"host": f"{getpass.getuser()}@127.0.0.1", "options": options, "folder": folder}
    server.terminate()
    server.wait(timeout=10)


def test_profile_over_ssh_copies_runs_and_cleans_up(cli, tmp_path, sshd, digits_bundle):
    out = tmp_path / "remote.json"
    result = cli("profile", digits_bundle, "--host", sshd["host"], *sshd["options"],
                 "--remote-python", sys.executable, "--runs", "7", "--warmup", "1", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(out.read_text())
    assert len(data["latency_ms"]["samples"]) == 7
    assert data["device"]["remote"] == sshd["host"] and data["device"]["cpu"]
    assert data["energy"]["available"] is False and data["energy"]["reason"]
    assert not list(Path("/tmp").glob("edgepipe-profile-*"))  # the remote copy was removed


def test_a_key_the_device_refuses_is_one_line(cli, tmp_path, sshd, digits_bundle):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    options = [o if not o.endswith("client_key") else str(tmp_path / "other") for o in sshd["options"]]
    result = cli("profile", digits_bundle, "--host", sshd["host"], *options, "--runs", "2",
                 "--out", tmp_path / "never.json")
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "cannot reach", "Permission denied")
    assert not (tmp_path / "never.json").exists()
