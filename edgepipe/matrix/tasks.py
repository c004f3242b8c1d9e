"""What runs on Ray workers: one cell's build (through the cache) and one board's benchmarks.

Plain functions and a plain class, turned into Ray tasks/actors by `orchestrate.py`, so they
can be called (and tested) without Ray too. They return dicts and never raise for a cell's
own failure: one bad model is reported in its cell while the others finish.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from edgepipe.errors import BackendError, EdgepipeError
from edgepipe.matrix.cache import BuildCache


def _summary(bundle: Path) -> dict[str, Any]:
    """What a release pipeline reads off a built cell: size, parity, accuracy."""
    from edgepipe import manifest as manifest_io

    manifest = manifest_io.load_manifest(bundle)
    accuracy: dict[str, Any] = {"parity_min_cosine": manifest["parity"].get("min_cosine")}
    for stage in manifest["stages"]:
        evaluation = stage["metrics"].get("evaluation")
        if stage["stage"] == "quantize" and evaluation:
            accuracy["top1_float"] = evaluation["float"].get("top1")
            accuracy["top1_int8"] = evaluation["int8"].get("top1")
    return {"size_bytes": sum(f["size"] for f in manifest["files"]), "backend": manifest["backend"]["name"],
            "target_resolved": manifest["target"]["name"], "precision": manifest["backend"]["precision"],
            "accuracy": accuracy}


def build_cell(job: dict[str, Any]) -> dict[str, Any]:
    """Build one cell into the cache (or find it there); a dict for matrix.json either way."""
    from edgepipe import api

    cache = BuildCache(Path(job["cache"]))
    key = job["key"]
    started = time.perf_counter()
    found, problem = cache.check(key)
    if found is not None:
        return {"status": "cached", "cache_hit": True, "bundle": str(found), "seconds": 0.0,
                **_summary(found)}
    noted = {"cache_problem": problem} if problem else {}
    workspace = cache.workspace(key)
    out = workspace / "bundle"
    try:
        api.build(job["model"], target=job["target"], profile=job["profile"], out=out,
                  inputs=job["inputs"], calib=job["calib"], eval_data=job["eval"], train=job["train"],
                  weights=Path(job["weights"]) if job["weights"] else None)
    except EdgepipeError as exc:
        shutil.rmtree(workspace, ignore_errors=True)
        return {"status": "failed", "cache_hit": False, "exit_code": exc.exit_code, "error": str(exc),
                "seconds": round(time.perf_counter() - started, 3), **noted}
    except Exception as exc:  # a bug in one cell must not take the matrix down
        shutil.rmtree(workspace, ignore_errors=True)
        return {"status": "failed", "cache_hit": False, "exit_code": 3,
                "error": f"internal error: {type(exc).__name__}: {exc}",
                "seconds": round(time.perf_counter() - started, 3), **noted}
    shutil.rmtree(workspace / "bundle.build", ignore_errors=True)  # intermediates: not worth caching
    seconds = round(time.perf_counter() - started, 3)
    bundle, placed = cache.publish(key, workspace, {"key": key, "inputs": job["key_parts"],
                                                    "build_seconds": seconds})
    return {"status": "built" if placed else "cached", "cache_hit": not placed, "bundle": str(bundle),
            "seconds": seconds, **noted, **_summary(bundle)}


class DeviceWorker:
    """One board. Ray runs an actor's calls one at a time (max_concurrency = the device's
    max_jobs, 1 by default), so a board never runs two benchmarks at once; a board that
    stops answering is retried, then marked unreachable and skipped from then on."""

    def __init__(self, device: dict[str, Any], runs: int, warmup: int, retries: int, rounds: int = 1) -> None:
        self.device, self.runs, self.warmup, self.retries = device, runs, warmup, retries
        self.rounds = rounds
        self.unreachable: str | None = None

    def profile(self, bundle: str, out: str) -> dict[str, Any]:
        from edgepipe import api
        from edgepipe.profiler.remote import RemoteHost

        if self.unreachable is not None:
            return {"status": "unreachable", "reason": self.unreachable, "attempts": 0}
        device = self.device
        remote = RemoteHost.of_device(device)
        reason = ""
        for attempt in range(1, self.retries + 2):
            started = time.time()
            try:
                _, data = api.profile(Path(bundle), runs=self.runs, warmup=self.warmup, out=Path(out),
                                      remote=remote, energy=device["energy"], rounds=self.rounds)
            except EdgepipeError as exc:
                reason = str(exc)
                if not (isinstance(exc, BackendError) or reason.startswith("cannot reach")):
                    return {"status": "failed", "exit_code": exc.exit_code, "error": reason,
                            "attempts": attempt}
                time.sleep(min(2.0 ** (attempt - 1), 5.0))
                continue
            latency = data["latency_ms"]
            energy = data.get("energy") or {}
            return {"status": "profiled", "attempts": attempt, "profile": out,
                    "p50_ms": latency["summary"]["p50"], "p90_ms": latency["summary"]["p90"],
                    "samples": latency["samples"], "rounds": latency["rounds"],
                    "energy_j": energy.get("joules_per_inference"), "started": started,
                    "finished": time.time()}
        self.unreachable = reason
        return {"status": "unreachable", "reason": reason, "attempts": self.retries + 1}
