"""Profile a bundle on this machine by running its own run.py in a fresh process.

Running the bundle's runner (rather than timing in-process) measures exactly what
the device runs, gives a true cold start (load + first inference in a new
process), and keeps edgepipe's own imports out of the timed process.
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
    command = [python, str(bundle / "run.py"), "--benchmark", "--json", "--runs", str(runs),
               "--warmup", str(warmup), "--min-duration", str(min_duration),
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
        message = lines[-1] if lines else f"run.py exited with {done.returncode}"
        error_type = {2: BadInputError, 3: BackendError}.get(done.returncode, EdgepipeError)
        error = error_type(f"{bundle}/run.py: {message.removeprefix('error: ')}")
        if error_type is EdgepipeError:
            error.exit_code = 3
        raise error
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BackendError(f"{bundle}/run.py printed no JSON result") from None
