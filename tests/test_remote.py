"""`edgepipe profile --host`: against a real OpenSSH server on 127.0.0.1 with a throwaway key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import assert_one_line_error


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
