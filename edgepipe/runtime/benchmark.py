"""The benchmark loop: load, first inference, warm-up, timed runs, per-layer times, energy.

One process is one sample of the machine's state (thread placement, memory layout,
neighbours), so callers that decide something run this in several fresh processes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .machine import machine_facts, peak_rss_mb
from .runners import Runner, open_runner, summarize_layers

RESULT_SCHEMA = "edgepipe.run/1"


@dataclass(frozen=True)
class BenchmarkOptions:
    runs: int = 100
    warmup: int = 10
    min_duration: float = 0.0  # keep timing until this many seconds have passed (and `runs` reached)
    threads: int | None = None  # None: the target's setting
    layers: bool = False
    energy: str | None = None  # meter spec; None: the target's
    energy_root: str = "/"  # fixture trees in tests
    energy_seconds: float = 3.0
    energy_idle_seconds: float = 1.0


def measure_energy(options: BenchmarkOptions, manifest: Mapping[str, Any], runner: Runner,
                   feed: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Joules per inference from the target's meter (or the one asked for), or why there are none."""
    from .energy import MeterUnavailable, measure_window, open_meter

    spec = options.energy or manifest["target"].get("energy", {}).get("meter", "none")
    try:
        meter = open_meter(spec, options.energy_root)
        meter.check()
    except MeterUnavailable as exc:
        return {"available": False, "meter": spec, "reason": str(exc)}

    def work() -> list[float]:
        finished: list[float] = []
        deadline = time.perf_counter() + options.energy_seconds
        while time.perf_counter() < deadline or not finished:
            runner.infer(feed)
            finished.append(time.perf_counter())
        return finished

    try:
        return measure_window(meter, work, idle_s=options.energy_idle_seconds)
    except MeterUnavailable as exc:
        return {"available": False, "meter": spec, "reason": str(exc)}


def benchmark(bundle: Path, manifest: Mapping[str, Any], feed: Mapping[str, np.ndarray],
              options: BenchmarkOptions, key: bytes | None = None) -> dict[str, Any]:
    started = time.perf_counter_ns()
    runner = open_runner(bundle, manifest, threads=options.threads, key=key)
    with runner:
        loaded = time.perf_counter_ns()
        runner.infer(feed)
        first = time.perf_counter_ns()
        for _ in range(options.warmup):
            runner.infer(feed)
        latencies: list[float] = []
        # At least `runs` runs, and at least `min_duration` seconds of them: fast models need
        # many runs before the tail percentiles mean anything.
        deadline = time.perf_counter() + options.min_duration
        while len(latencies) < options.runs or time.perf_counter() < deadline:
            begin = time.perf_counter_ns()
            runner.infer(feed)
            latencies.append((time.perf_counter_ns() - begin) / 1e6)
        layers = (summarize_layers(runner.layer_times(feed, options.runs), options.runs)
                  if options.layers else None)
        energy = measure_energy(options, manifest, runner, feed)
    return {
        "schema": RESULT_SCHEMA,
        "energy": energy,
        "per_layer": layers,
        "model": manifest["model"]["name"],
        "target": manifest["target"]["name"],
        "runtime": runner.runtime,
        "warnings": runner.warnings,
        "load_ms": (loaded - started) / 1e6,
        "first_inference_ms": (first - loaded) / 1e6,
        "warmup": options.warmup,
        "runs": len(latencies),
        "min_duration_s": options.min_duration,
        "latencies_ms": latencies,
        "peak_rss_mb": peak_rss_mb(),
        "host": machine_facts(),
    }
