"""`--profile auto`: build every candidate precision, time each on this host, ship the fastest
that meets its own accuracy budget.

int8 is not always fastest (measured on a small MobileNetV3-style network: OpenVINO bf16
0.31 ms, f32 0.43 ms, int8 0.47 ms), so the choice is measured, not assumed. Candidates are
timed the way DESIGN.md section 7 asks: each bundle by the runtime in a fresh process,
in interleaved rounds, median of round medians, with the same thread count.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepipe.backends import get_backend
from edgepipe.candidate_timing import host_runs_target
from edgepipe.config import Profile, Target
from edgepipe.errors import BadInputError, GateFailedError
from edgepipe.profiler.rounds import LocalPlace, TimingOptions, time_rounds
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
           calib: str | None, work: Path, **build_args: Any) -> tuple[dict[str, Any], Path]:
    """Build the candidates into `work` and time them; (the selection record, the chosen bundle).

    The chosen bundle is the very one that was timed: the caller ships it, not a rebuild."""
    if any(load_profile(name).candidates for name in profile.candidates):
        raise BadInputError(f"profile '{profile.name}': a candidate may not itself have candidates")
    host = get_backend(target.backend).host_precisions(target.runtime)
    if target.device.cpu_features is not None:
        elsewhere = host_runs_target(target.device.kind, target.device.isa, target.backend,
                                     target.device.cpu_features)
        if elsewhere and host:
            raise BadInputError(f"--profile auto times its candidates on this host, but {elsewhere}: "
                                "build a profile by name, or profile the candidates on the device")
    rows: list[dict[str, Any]] = []
    built: dict[str, Path] = {}
    for index, name in enumerate(profile.candidates):
        candidate = load_profile(name)
        reason = _skip_reason(candidate, target, host, calib is not None)
        if reason:
            rows.append({"profile": name, "status": "skipped", "reason": reason})
            continue
        # --min-speedup is about the quantize stage: candidates without one build without it.
        args = build_args if "quantize" in candidate.stages else {
            key: value for key, value in build_args.items() if key != "min_speedup"}
        try:
            # A candidate may be a path to a profile file: its folder is named after its index.
            folder = re.sub(r"[^\w.-]", "_", f"{index}-{candidate.name}")
            result = build(model, target=target_spec, profile=name, out=work / folder, calib=calib,
                           **args)
        except GateFailedError as exc:  # over its budget: never shipped, whatever its speed
            rows.append({"profile": name, "status": "over budget", "reason": str(exc)})
            continue
        built[name] = result.bundle
        rows.append({"profile": name, "status": "built", "cosine": result.summary["parity"]["min_cosine"]})
    if not built:
        raise GateFailedError(f"--profile {profile.name}: no candidate could be shipped ("
                              + "; ".join(f"{r['profile']}: {r['reason']}" for r in rows) + ")")
    settings = profile.auto
    options = TimingOptions(runs=settings.runs * settings.rounds, warmup=settings.warmup,
                            threads=settings.threads)
    with LocalPlace() as place:
        raws = time_rounds(place, list(built.values()), settings.rounds, options)
    medians = {name: [statistics.median(r["latencies_ms"]) for r in rounds]
               for name, rounds in zip(built, raws, strict=True)}
    latency = {name: statistics.median(values) for name, values in medians.items()}
    chosen = min(latency, key=latency.__getitem__)
    for row in rows:
        if row["profile"] in latency:
            row["median_ms"] = round(latency[row["profile"]], 4)
            row["round_medians_ms"] = [round(v, 4) for v in medians[row["profile"]]]
    others = ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(latency.items(), key=lambda kv: kv[1])
                       if name != chosen)
    record = {"chosen": chosen, "candidates": rows, "timing": settings.model_dump(mode="json"),
              "reason": f"fastest within its budget on this host: {latency[chosen]:.3f} ms"
                        + (f" (vs {others})" if others else " (the only candidate that could ship)")}
    return record, built[chosen]
