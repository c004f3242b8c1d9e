"""Profile a bundle on another machine over SSH: copy it, run its run.py there, bring the result back.

The system's OpenSSH client (`ssh`) does the transport: it already knows the user's
keys, agents, jump hosts and known_hosts, which a Python SSH library would have to be
taught. Batch mode is forced, so a missing key fails with a message instead of a prompt.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.errors import BackendError, BadInputError

REMOTE_PREFIX = "edgepipe-profile-"


@dataclass(frozen=True)
class RemoteHost:
    host: str  # user@device
    port: int | None = None
    identity: Path | None = None
    python: str = "python3"
    ssh_options: Sequence[str] = field(default_factory=tuple)  # extra `-o Key=Value` entries

    def _common(self, port_flag: str) -> list[str]:
        args = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
        for option in self.ssh_options:
            args += ["-o", option]
        if self.port:
            args += [port_flag, str(self.port)]
        if self.identity:
            args += ["-i", str(self.identity)]
        return args

    def ssh(self, command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        return _run(["ssh", *self._common("-p"), self.host, command], timeout_s, self.host)

    def copy_to(self, local: Path, remote: str, timeout_s: float) -> None:
        """Stream the folder as a tar archive into `tar -x` on the device: needs no SFTP
        subsystem (absent on many embedded sshd/dropbear builds), only a POSIX tar there."""
        import tarfile

        command = ["ssh", *self._common("-p"), self.host, f"tar -C {shlex.quote(remote)} -xf -"]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=process.stdin, mode="w|") as archive:
                archive.add(local, arcname=local.name)
            process.stdin.close()
            process.wait(timeout=timeout_s)
        except (BrokenPipeError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        stderr = process.stderr.read()
        process.stderr.close()
        if process.returncode != 0:
            raise BackendError(f"copying the bundle to {self.host} failed: "
                               f"{_last_line(stderr.decode(errors='replace'))}")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run(command: list[str], timeout_s: float, host: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise BackendError(f"'{command[0]}' is not installed: profiling over SSH needs the OpenSSH client")
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{command[0]} to {host} took longer than {timeout_s:.0f} s") from None


def run_remote_benchmark(bundle: Path, remote: RemoteHost, *, runs: int, warmup: int, threads: int | None,
                         layers: bool, min_duration: float = 0.0, timeout_s: float = 3600,
                         energy: str | None = None) -> dict[str, Any]:
    """The bundle's run.py --verify --benchmark on `remote`; its JSON result."""
    made = remote.ssh(f"mktemp -d -t {REMOTE_PREFIX}XXXXXX", 60)
    if made.returncode != 0:
        reason = _last_line(made.stderr)
        error = BadInputError if "Permission denied" in reason or "Could not resolve" in reason \
            else BackendError
        raise error(f"cannot reach {remote.host} over SSH: {reason}")
    folder = made.stdout.strip().splitlines()[-1]
    try:
        remote.copy_to(bundle, folder, timeout_s)
        target = f"{folder}/{bundle.name}"
        command = [remote.python, f"{target}/run.py", "--bundle", target, "--verify", "--benchmark", "--json",
                   "--runs", str(runs), "--warmup", str(warmup), "--min-duration", str(min_duration)]
        if threads is not None:
            command += ["--threads", str(threads)]
        if layers:
            command.append("--layers")
        if energy:
            command += ["--energy", energy]
        done = remote.ssh(shlex.join(command), timeout_s)
        if done.returncode != 0:
            raise BackendError(f"run.py on {remote.host} failed: {_last_line(done.stderr)}")
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BackendError(f"run.py on {remote.host} printed no JSON result") from None
    finally:
        remote.ssh(f"rm -rf {shlex.quote(folder)}", 60)
