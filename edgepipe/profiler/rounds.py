"""Timing in rounds, each a fresh process: the process is the statistical unit.

Thread placement, memory layout and neighbours on a shared host are fixed for the life of a
process, so the spread between processes is larger than the spread within one, and samples
from one process are not independent. A profile is therefore several rounds, each a new
runner process; bundles compared on one device run in interleaved rounds (A B, B A, A B, …),
so drift of the device's state hits both alike.

Where the rounds run is a *place*: this machine (the installed runtime in a fresh process,
never a bundle's files) or a device over SSH (the bundle's own run.py, after `--verify`).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from edgepipe.errors import BackendError, BadInputError, EdgepipeError
from edgepipe.profiler.remote import REMOTE_PREFIX, RemoteHost, last_line

DEFAULT_ROUNDS = 6  # a profile: each a fresh process
# `compare --run`: round pairs. One odd pair (a process that landed badly) must not decide the
# 99 % interval: with 6 pairs it still does about 1 time in 100, with 10 about 1 in 10,000.
AB_ROUNDS = 10
AB_LOOKS = 3  # `compare --run` adds AB_ROUNDS pairs while the verdict is inconclusive, up to 3 looks
MIN_AB_ROUNDS = 4  # fewer pairs cannot reach 1 % significance against any slowdown


@dataclass(frozen=True)
class TimingOptions:
    runs: int = 100  # in all, split across the rounds
    warmup: int = 10  # per round: every process warms up
    threads: int | None = None
    layers: bool = False  # per-layer times, in the first round only
    min_duration: float = 0.0  # in all, split across the rounds
    energy: str | None = None  # meter override

    def for_round(self, index: int, rounds: int) -> TimingOptions:
        """Round `index`'s share: the runs split as evenly as they go (each round at least one),
        per-layer times in the first round only."""
        runs = self.runs // rounds + (1 if index < self.runs % rounds else 0)
        return replace(self, runs=max(1, runs), min_duration=self.min_duration / rounds,
                       layers=self.layers and index == 0)

    def args(self) -> list[str]:
        args = ["--benchmark", "--json", "--runs", str(self.runs), "--warmup", str(self.warmup),
                "--min-duration", str(self.min_duration)]
        if self.threads is not None:
            args += ["--threads", str(self.threads)]
        if self.layers:
            args.append("--layers")
        if self.energy:
            args += ["--energy", self.energy]
        return args


class Place(Protocol):
    """Where bundles are timed; a context manager (a remote place cleans up its copies)."""

    host: str | None  # None: this machine

    def run(self, bundle: Path, args: list[str]) -> dict[str, Any]:
        """One fresh runner process on `bundle`; its JSON result."""
        ...

    def __enter__(self) -> Place: ...

    def __exit__(self, *exc_info: object) -> None: ...


def runtime_command(python: str = sys.executable) -> list[str]:
    """`python -m edgepipe.runtime` for the very edgepipe this process runs (installed or a source
    checkout), whatever the current folder holds: never a bundle's copy."""
    import edgepipe

    root = str(Path(edgepipe.__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); from edgepipe.runtime.cli import main; "
            "sys.exit(main())")
    return [python, "-P", "-c", code]


def _result(stdout: str, where: str) -> dict[str, Any]:
    try:
        return json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BackendError(f"{where}: the runner printed no JSON result") from None


class LocalPlace:
    host = None

    def __init__(self, python: str = sys.executable, timeout_s: float = 3600) -> None:
        self.python, self.timeout_s = python, timeout_s

    def __enter__(self) -> LocalPlace:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def run(self, bundle: Path, args: list[str]) -> dict[str, Any]:
        command = [*runtime_command(self.python), "--bundle", str(bundle), *args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise BackendError(f"profiling {bundle} took longer than {self.timeout_s:.0f} s") from None
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            message = lines[-1] if lines else f"the runner exited with {done.returncode}"
            error_type = {1: EdgepipeError, 2: BadInputError}.get(done.returncode, BackendError)
            error = error_type(f"{bundle}: {message.removeprefix('error: ')}")
            error.exit_code = done.returncode if done.returncode in (1, 2) else 3
            raise error
        return _result(done.stdout, str(bundle))


class RemotePlace:
    """A device over SSH: each bundle is copied once (into a fresh folder removed on exit), then
    each round runs its run.py there, after it has verified every file."""

    def __init__(self, remote: RemoteHost, timeout_s: float = 3600) -> None:
        self.remote, self.timeout_s = remote, timeout_s
        self.host = remote.host
        self._folder: str | None = None
        self._copies: dict[Path, str] = {}

    def __enter__(self) -> RemotePlace:
        made = self.remote.ssh(f"mktemp -d -t {REMOTE_PREFIX}XXXXXX", 60)
        if made.returncode != 0:
            reason = last_line(made.stderr)
            error = BadInputError if "Permission denied" in reason or "Could not resolve" in reason \
                else BackendError
            raise error(f"cannot reach {self.remote.host} over SSH: {reason}")
        self._folder = made.stdout.strip().splitlines()[-1]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._folder is not None:
            self.remote.ssh(f"rm -rf {shlex.quote(self._folder)}", 60)
            self._folder = None

    def _copy(self, bundle: Path) -> str:
        if bundle not in self._copies:
            assert self._folder is not None, "RemotePlace used outside its `with` block"
            folder = f"{self._folder}/{len(self._copies)}"
            made = self.remote.ssh(f"mkdir {shlex.quote(folder)}", 60)
            if made.returncode != 0:
                raise BackendError(f"cannot write on {self.remote.host}: {last_line(made.stderr)}")
            self.remote.copy_to(bundle, folder, self.timeout_s)
            self._copies[bundle] = f"{folder}/{bundle.name}"
        return self._copies[bundle]

    def run(self, bundle: Path, args: list[str]) -> dict[str, Any]:
        target = self._copy(bundle)
        command = [self.remote.python, f"{target}/run.py", "--bundle", target, "--verify", *args]
        done = self.remote.ssh(shlex.join(command), self.timeout_s)
        if done.returncode != 0:
            raise BackendError(f"run.py on {self.remote.host} failed: {last_line(done.stderr)}")
        return _result(done.stdout, f"run.py on {self.remote.host}")


def time_rounds(place: Place, bundles: Sequence[Path], rounds: int, options: TimingOptions,
                first_index: int = 0) -> list[list[dict[str, Any]]]:
    """Each bundle timed in `rounds` fresh processes, interleaved and counterbalanced (A B, B A, …;
    `first_index` continues an earlier call's alternation): one list of raw results per bundle."""
    if rounds < 1:
        raise BadInputError("--rounds must be at least 1")
    results: list[list[dict[str, Any]]] = [[] for _ in bundles]
    order = list(range(len(bundles)))
    for index in range(rounds):
        for which in (order if (first_index + index) % 2 == 0 else order[::-1]):
            this = options.for_round(index, rounds)
            if first_index:
                this = replace(this, layers=False)
            results[which].append(place.run(bundles[which], this.args()))
    return results
