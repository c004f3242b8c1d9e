"""Profile a bundle on this machine: the runtime's benchmark in a fresh process.

The process runs `python -m edgepipe.runtime`, the installed copy of the very code the
bundle ships (the host never runs a file from a bundle it profiles). A fresh process
gives a true cold start (load + first inference) and keeps the rest of edgepipe's
imports out of the timed process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgepipe.errors import BackendError, BadInputError, EdgepipeError


def run_bundle_benchmark(bundle: Path, *, runs: int, warmup: int, threads: int | None,
                         python: str = sys.executable, timeout_s: float = 3600,
                         layers: bool = False, min_duration: float = 0.0,
                         energy: str | None = None) -> dict[str, Any]:
    # -P: the current folder is not put on sys.path, so the installed runtime is what runs.
    command = [python, "-P", "-m", "edgepipe.runtime", "--bundle", str(bundle), "--benchmark", "--json",
               "--runs", str(runs), "--warmup", str(warmup), "--min-duration", str(min_duration),
               *(["--layers"] if layers else []), *(["--energy", energy] if energy else [])]
    if threads is not None:
        command += ["--threads", str(threads)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise BackendError(f"profiling {bundle} took longer than {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        message = lines[-1] if lines else f"the runner exited with {done.returncode}"
        error_type = {2: BadInputError, 3: BackendError}.get(done.returncode, EdgepipeError)
        error = error_type(f"{bundle}: {message.removeprefix('error: ')}")
        if error_type is EdgepipeError:
            error.exit_code = 3
        raise error
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BackendError(f"{bundle}: the runner printed no JSON result") from None
