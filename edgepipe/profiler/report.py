"""profile.json (schema "edgepipe.profile/1"): assembled from a runner's raw result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepipe import __version__
from edgepipe.manifest import MANIFEST_NAME, build_time, sha256_file
from edgepipe.profiler.device_info import host_facts
from edgepipe.profiler.stats import latency_summary

SCHEMA = "edgepipe.profile/1"


def default_profile_path(bundle: Path) -> Path:
    """Beside the bundle: writing into it would break its verification."""
    return bundle.with_name(bundle.name + ".profile.json")


def make_profile(bundle: Path, manifest: dict[str, Any], raw: dict[str, Any],
                 threads: int | None, remote: str | None = None) -> dict[str, Any]:
    batch = int(manifest["inputs"][0]["shape"][0]) if manifest["inputs"][0]["shape"] else 1
    latencies = raw["latencies_ms"]
    return {
        "schema": SCHEMA,
        "created": build_time(),
        "edgepipe": __version__,
        "bundle": {
            "path": str(bundle),
            "model": manifest["model"]["name"],
            "target": manifest["target"]["name"],
            "backend": manifest["backend"]["name"],
            "manifest_sha256": sha256_file(bundle / MANIFEST_NAME),
        },
        # Measured on a remote device: its own facts, as its run.py reported them.
        "device": {**raw.get("host", {}), "remote": remote} if remote else host_facts(),
        "runtime": raw["runtime"],
        "settings": {
            "warmup": raw["warmup"],
            "runs": raw["runs"],
            "min_duration_s": raw.get("min_duration_s", 0.0),
            "threads": threads if threads is not None else manifest["backend"]["runtime"].get("threads"),
            "threads_note": "0 means the runtime's default (one per physical core)",
            "batch": batch,
            "inputs": "seeded random (seed 0)",
        },
        "latency_ms": {"samples": latencies, "summary": latency_summary(latencies, batch)},
        "cold_start_ms": {
            "load": raw["load_ms"],
            "first_inference": raw["first_inference_ms"],
            "total": raw["load_ms"] + raw["first_inference_ms"],
            "note": "measured in a fresh process",
        },
        "memory": {
            "peak_rss_mb": raw["peak_rss_mb"],
            "source": "getrusage ru_maxrss of the runner process (interpreter and runtime included)",
        },
        "energy": raw.get("energy") or {"available": False,
                                        "reason": "this bundle's run.py does not measure energy"},
        "per_layer": raw.get("per_layer") or {"available": False,
                                              "reason": "not requested (edgepipe profile --layers)"},
        "warnings": raw.get("warnings", []),
    }
