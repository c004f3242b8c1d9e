"""`--profile auto`: build every candidate precision, time each on this host, ship the fastest
that meets its own accuracy budget.

int8 is not always fastest (measured on a small MobileNetV3-style network: OpenVINO bf16
0.31 ms, f32 0.43 ms, int8 0.47 ms), so the choice is measured, not assumed. Candidates are
timed the way DESIGN.md section 7 asks: each bundle by its own run.py in a fresh process,
in interleaved rounds, median of round medians, with the same thread count.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepipe.backends import get_backend
from edgepipe.config import Profile, Target
from edgepipe.errors import BadInputError, GateFailedError
from edgepipe.profiler.local import run_bundle_benchmark
from edgepipe.profiles import load_profile

Build = Callable[..., Any]  # api.build


def _skip_reason(candidate: Profile, target: Target, host_precisions: tuple[str, ...],
                 has_calibration: bool) -> str | None:
    backend = get_backend(target.backend)
    precision = getattr(candidate.stage_settings.get("lower"), "precision", "f32")
    if precision not in backend.precisions:
        return f"backend {backend.name} has no {precision}"
    if not host_precisions:
        return f"this host cannot run {backend.name} bundles (the device must time them)"
    if precision not in host_precisions:
        return f"this host's {target.runtime.model_dump().get('device', 'CPU')} cannot run {precision}"
    if "quantize" in candidate.stages and not has_calibration:
        return "int8 needs calibration data (--calib)"
    return None


def select(build: Build, model: str, *, target: Target, target_spec: str, profile: Profile,
           calib: str | None, out: Path, **build_args: Any) -> dict[str, Any]:
    """Build and time the candidates; return the selection record (chosen profile and table)."""
    if any(load_profile(name).candidates for name in profile.candidates):
        raise BadInputError(f"profile '{profile.name}': a candidate may not itself have candidates")
    host = get_backend(target.backend).host_precisions(target.runtime)
    rows: list[dict[str, Any]] = []
    built: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=".edgepipe-auto-", dir=out.parent) as work:
        for name in profile.candidates:
            candidate = load_profile(name)
            reason = _skip_reason(candidate, target, host, calib is not None)
            if reason:
                rows.append({"profile": name, "status": "skipped", "reason": reason})
                continue
            try:
                result = build(model, target=target_spec, profile=name, out=Path(work) / name, calib=calib,
                               **build_args)
            except GateFailedError as exc:
                rows.append({"profile": name, "status": "over budget", "reason": str(exc)})
                continue
            built[name] = result.bundle
            rows.append({"profile": name, "status": "built",
                         "cosine": result.summary["parity"]["min_cosine"]})
        if not built:
            raise GateFailedError(f"--profile {profile.name}: no candidate could be shipped ("
                                  + "; ".join(f"{r['profile']}: {r['reason']}" for r in rows) + ")")
        settings = profile.auto
        medians: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(settings.rounds):
            for name, bundle in built.items():
                raw = run_bundle_benchmark(bundle, runs=settings.runs, warmup=settings.warmup,
                                           threads=settings.threads)
                medians[name].append(statistics.median(raw["latencies_ms"]))
    latency = {name: statistics.median(values) for name, values in medians.items()}
    chosen = min(latency, key=latency.__getitem__)
    for row in rows:
        if row["profile"] in latency:
            row["median_ms"] = round(latency[row["profile"]], 4)
    others = ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(latency.items(), key=lambda kv: kv[1])
                       if name != chosen)
    return {"chosen": chosen, "candidates": rows, "timing": settings.model_dump(mode="json"),
            "reason": f"fastest within its budget on this host: {latency[chosen]:.3f} ms"
                      + (f" (vs {others})" if others else " (the only candidate that could ship)")}
