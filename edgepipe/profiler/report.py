"""profile.json (schema "edgepipe.profile/1"): assembled from the runner's raw results, one per
round (fresh process)."""

from __future__ import annotations

import statistics
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


def _energy(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds' energy: medians across rounds, and each round's per-segment samples."""
    measured = [r["energy"] for r in raws if (r.get("energy") or {}).get("available")]
    if not measured:
        return next((r["energy"] for r in raws if r.get("energy")), None) or {
            "available": False, "reason": "this bundle's runner does not measure energy"}
    merged = dict(measured[0])
    for key in ("joules_per_inference", "mean_active_power_w", "idle_power_w"):
        values = [m[key] for m in measured if m.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    # One entry per round, empty where a round measured none, so interleaved rounds stay paired.
    merged["rounds_samples_j_per_inference"] = [
        (r.get("energy") or {}).get("samples_j_per_inference", []) if (r.get("energy") or {}).get("available")
        else [] for r in raws]
    merged["samples_j_per_inference"] = [s for m in measured for s in m.get("samples_j_per_inference", [])]
    merged["inferences"] = sum(m.get("inferences", 0) for m in measured)
    merged["rounds"] = len(measured)
    return merged


def make_profile(bundle: Path, manifest: dict[str, Any], raws: list[dict[str, Any]],
                 threads: int | None, remote: str | None = None) -> dict[str, Any]:
    first = raws[0]
    batch = int(manifest["inputs"][0]["shape"][0]) if manifest["inputs"][0]["shape"] else 1
    rounds = [r["latencies_ms"] for r in raws]
    latencies = [value for samples in rounds for value in samples]
    loads = [r["load_ms"] for r in raws]
    firsts = [r["first_inference_ms"] for r in raws]
    peaks = [r["peak_rss_mb"] for r in raws if r.get("peak_rss_mb") is not None]
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
        "device": {**first.get("host", {}), "remote": remote} if remote else host_facts(),
        "runtime": first["runtime"],
        "settings": {
            "rounds": len(raws),
            "rounds_note": "each round is a fresh process; runs are split across rounds",
            "warmup": first["warmup"],
            "runs": len(latencies),
            "min_duration_s": sum(r.get("min_duration_s", 0.0) for r in raws),
            "threads": threads if threads is not None else manifest["backend"]["runtime"].get("threads"),
            "threads_note": "0 means the runtime's default (one per physical core)",
            "batch": batch,
            "inputs": "seeded random (seed 0)",
        },
        "latency_ms": {"samples": latencies, "rounds": rounds,
                       "round_medians": [statistics.median(r) for r in rounds],
                       "summary": latency_summary(latencies, batch)},
        "cold_start_ms": {
            "load": statistics.median(loads),
            "first_inference": statistics.median(firsts),
            "total": statistics.median(a + b for a, b in zip(loads, firsts, strict=True)),
            "rounds": [{"load": a, "first_inference": b} for a, b in zip(loads, firsts, strict=True)],
            "note": "median over rounds, each a fresh process",
        },
        "memory": {
            "peak_rss_mb": max(peaks) if peaks else None,
            "source": "getrusage ru_maxrss of the runner process (interpreter and runtime included); "
                      "the largest over rounds",
        },
        "energy": _energy(raws),
        "per_layer": first.get("per_layer") or {"available": False,
                                                "reason": "not requested (edgepipe profile --layers)"},
        "warnings": sorted({w for r in raws for w in r.get("warnings", [])}),
    }
