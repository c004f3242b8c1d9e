"""Time a stage's candidates against each other the way bench/ does, inside a build.

A build decides with these numbers (an int8 model that is not faster than the float one is
not shipped), so they come from the method DESIGN.md section 7 asks of every deciding
number: each candidate in fresh processes, interleaved and counterbalanced rounds
(A B, B A, A B …), the process as the statistical unit, the median of round medians. Timing
inside the build process measured noise: on a busy 2-core host one fallback step's "cost"
swung between -8.7 and +10.2 ms.

Only where the build host runs what the target device runs: a CPU target whose ISA this host
has. Elsewhere (a Jetson, a phone) nothing is timed and the report says so.
"""

from __future__ import annotations

import json
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgepipe.artifact import Artifact
from edgepipe.errors import BackendError

ROUNDS = 3  # process pairs per comparison
RUNS = 25  # timed runs per process
WARMUP = 5
# Features that change which int8/bf16 kernels the CPU runtimes pick.
KERNEL_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
                   "asimddp", "i8mm")
HOST_ISAS = {"x86_64": "x86-64", "amd64": "x86-64", "aarch64": "arm64", "arm64": "arm64"}


def host_runs_target(device_kind: str, isa: str, backend: str,
                     cpu_features: Sequence[str] | None = None) -> str | None:
    """None when this host's timings stand for the target device; else why they do not.

    Where the deployment CPU's features are declared, the ones that pick int8 and bf16 kernels
    must match this host's: an AVX2 host's int8 timings say nothing about a VNNI device."""
    if backend in ("tensorrt", "tflite"):
        return f"{backend} targets run on their own device; this host does not time them"
    if device_kind != "cpu":
        return f"the target device is a {device_kind}, not this host's CPU"
    host = HOST_ISAS.get(platform.machine().lower(), platform.machine().lower())
    if isa not in ("any", host) and not isa.startswith(host):
        return f"the target's ISA is {isa}, this host's {host}"
    if cpu_features is not None:
        from edgepipe.runtime.machine import cpu_features as host_features

        deciding = set(KERNEL_FEATURES)
        device, here = deciding & set(cpu_features), deciding & set(host_features())
        if device != here:
            listed = ", ".join(sorted(device)) or "none of " + "/".join(KERNEL_FEATURES)
            ours = ", ".join(sorted(here)) or "none"
            return f"the deployment CPU ({listed}) differs from this host ({ours})"
    return None


@dataclass(frozen=True)
class Timed:
    """Round medians (ms) per candidate, in the order given."""

    round_medians: tuple[tuple[float, ...], ...]

    def median(self, index: int) -> float:
        return statistics.median(self.round_medians[index])

    def ratios(self, baseline: int, candidate: int) -> list[float]:
        """Per round: how many times faster `candidate` ran than `baseline` in the same round."""
        return [b / c for b, c in zip(self.round_medians[baseline], self.round_medians[candidate],
                                      strict=True)]


@dataclass(frozen=True)
class Speedup:
    """A speed-up decided pair by pair: each round's ratio is one observation."""

    baseline_ms: float
    candidate_ms: float
    ratios: tuple[float, ...]

    @property
    def value(self) -> float:
        return statistics.median(self.ratios)


def speedup(baseline: Artifact, candidate: Artifact, threshold: float, **timing: Any) -> Speedup:
    """How many times faster `candidate` runs than `baseline`, with as many rounds as the verdict
    against `threshold` needs: ROUNDS pairs that all fall on one side decide (were the true ratio
    exactly the threshold, that happens by chance 2 x 1/8 of the time); split pairs get ROUNDS
    more and the median of all decides. Near the threshold one pair of medians measured noise:
    the same int8 model read 1.12x in one build and 0.85x in the next."""
    timed = time_candidates([baseline, candidate], **timing)
    ratios = timed.ratios(0, 1)
    if min(ratios) < threshold <= max(ratios):
        more = time_candidates([baseline, candidate], **timing)
        timed = Timed(tuple(a + b for a, b in zip(timed.round_medians, more.round_medians, strict=True)))
        ratios = timed.ratios(0, 1)
    return Speedup(timed.median(0), timed.median(1), tuple(ratios))


def _worker_command(job: Path) -> list[str]:
    import edgepipe

    root = str(Path(edgepipe.__file__).resolve().parent.parent)
    code = (f"import sys; sys.path.insert(0, {root!r}); from edgepipe.candidate_timing import _worker; "
            f"_worker({str(job)!r})")
    return [sys.executable, "-P", "-c", code]


def _worker(job_path: str) -> None:
    """In a fresh process: open one candidate with the target's runner, print its latencies."""
    import time

    from edgepipe.backends import get_backend

    with open(job_path, "rb") as handle:
        job = pickle.load(handle)  # written by time_candidates in this build, never user data
    feed = dict(np.load(job["feed"]))
    backend = get_backend(job["backend"])
    with backend.candidate_runner(job["artifact"], job["runtime"], job["precision"]) as runner:
        for _ in range(job["warmup"]):
            runner.infer(feed)
        times = []
        for _ in range(job["runs"]):
            started = time.perf_counter()
            runner.infer(feed)
            times.append((time.perf_counter() - started) * 1000)
    print(json.dumps(times))


def time_candidates(artifacts: Sequence[Artifact], *, backend: str, runtime: Any, precision: str,
                    feed: Mapping[str, np.ndarray], rounds: int = ROUNDS, runs: int = RUNS,
                    warmup: int = WARMUP, timeout_s: float = 600) -> Timed:
    """Each artifact timed in `rounds` fresh processes, counterbalanced."""
    medians: list[list[float]] = [[] for _ in artifacts]
    with tempfile.TemporaryDirectory(prefix="edgepipe-timing-") as scratch:
        feed_path = Path(scratch) / "feed.npz"
        np.savez(feed_path, **{name: np.asarray(value) for name, value in feed.items()})
        jobs = []
        for index, artifact in enumerate(artifacts):
            job = Path(scratch) / f"job-{index}.pickle"
            job.write_bytes(pickle.dumps({"artifact": artifact, "backend": backend, "runtime": runtime,
                                          "precision": precision, "feed": str(feed_path), "runs": runs,
                                          "warmup": warmup}))
            jobs.append(job)
        order = list(range(len(artifacts)))
        for round_index in range(rounds):
            for which in (order if round_index % 2 == 0 else order[::-1]):
                done = subprocess.run(_worker_command(jobs[which]), capture_output=True, text=True,
                                      timeout=timeout_s, check=False)
                if done.returncode != 0:
                    lines = done.stderr.strip().splitlines()
                    raise BackendError(f"timing {artifacts[which].path.name} failed: "
                                       f"{lines[-1] if lines else done.returncode}")
                times = json.loads(done.stdout.strip().splitlines()[-1])
                medians[which].append(statistics.median(times))
    return Timed(tuple(tuple(m) for m in medians))
