"""Reach a device over SSH: run a command there, stream a bundle to it (`rounds.RemotePlace`
copies a bundle once and runs its run.py there round after round).

The system's OpenSSH client (`ssh`) does the transport: it already knows the user's
keys, agents, jump hosts and known_hosts, which a Python SSH library would have to be
taught. Batch mode is forced, so a missing key fails with a message instead of a prompt.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepipe.errors import BackendError

REMOTE_PREFIX = "edgepipe-profile-"


@dataclass(frozen=True)
class RemoteHost:
    host: str  # user@device
    port: int | None = None
    identity: Path | None = None
    python: str = "python3"
    ssh_options: Sequence[str] = field(default_factory=tuple)  # extra `-o Key=Value` entries

    @classmethod
    def of_device(cls, device: Mapping[str, Any]) -> RemoteHost:
        """A board of a devices.toml fleet (as `DeviceEntry.model_dump()` gives it)."""
        identity = Path(device["identity"]).expanduser() if device.get("identity") else None
        return cls(device["host"], device.get("port"), identity, device.get("python", "python3"),
                   tuple(device.get("ssh_options", ())))

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
                               f"{last_line(stderr.decode(errors='replace'))}")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run(command: list[str], timeout_s: float, host: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(command[0]) is None:
        raise BackendError(f"'{command[0]}' is not installed: profiling over SSH needs the OpenSSH client")
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BackendError(f"{command[0]} to {host} took longer than {timeout_s:.0f} s") from None
