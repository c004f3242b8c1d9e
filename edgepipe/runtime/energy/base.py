"""The EnergyMeter protocol and the sampler that turns readings into joules per inference."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol


class MeterUnavailable(Exception):
    """The meter cannot be read here; the message is the reason reported in profile.json."""


@dataclass(frozen=True)
class Reading:
    """A cumulative energy counter in joules, or an instantaneous power in watts."""

    kind: str  # "energy" | "power"
    value: float


class EnergyMeter(Protocol):
    name: str
    resolution_j: float  # smallest energy step the meter reports, for the report

    def check(self) -> None:
        """Raise MeterUnavailable(reason) when the meter cannot be read here."""
        ...

    def read(self) -> Reading: ...


def _integrate(trace: list[tuple[float, Reading]], unwrap: Callable[[float, float], float]) -> float:
    """Joules over a trace: counter deltas (wrap-aware) or trapezoids of power."""
    total = 0.0
    for (t0, a), (t1, b) in pairwise(trace):
        if a.kind == "energy":
            total += unwrap(a.value, b.value)
        else:
            total += 0.5 * (a.value + b.value) * (t1 - t0)
    return total


class _Sampler(threading.Thread):
    def __init__(self, meter: EnergyMeter, rate_hz: float) -> None:
        super().__init__(daemon=True)
        self.meter, self.period = meter, 1.0 / rate_hz
        self.trace: list[tuple[float, Reading]] = []
        self.error: Exception | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.trace.append((time.perf_counter(), self.meter.read()))
            except (OSError, ValueError) as exc:  # a rail vanished, a driver reset: say so
                self.error = exc
                return
            self._stop_event.wait(self.period)

    def stop(self) -> list[tuple[float, Reading]]:
        self._stop_event.set()
        self.join()
        if self.error is not None:
            raise MeterUnavailable(f"reading {self.meter.name} failed during the run: {self.error}")
        self.trace.append((time.perf_counter(), self.meter.read()))
        return self.trace


def _segment_samples(trace: list[tuple[float, Reading]], unwrap, idle_w: float, done_at: list[float],
                     segment_s: float) -> list[float]:
    """Joules per inference in consecutive segments of the run: raw samples for `compare`."""
    import numpy as np

    times = np.array([t for t, _ in trace])
    cumulative = np.concatenate([[0.0], np.cumsum([_integrate([a, b], unwrap) for a, b in pairwise(trace)])])
    done = np.asarray(done_at)
    samples = []
    edges = np.arange(times[0], times[-1], segment_s)
    for start, end in pairwise([*edges, times[-1]]):
        count = int(((done > start) & (done <= end)).sum())
        if count and end - start >= segment_s / 2:
            energy = float(np.interp(end, times, cumulative) - np.interp(start, times, cumulative))
            samples.append(max(energy - idle_w * (end - start), 0.0) / count)
    return samples


def measure_window(meter: EnergyMeter, work: Callable[[], int | list[float]], *, rate_hz: float = 20.0,
                   idle_s: float = 1.0, segment_s: float = 0.25) -> dict:
    """Run `work` while sampling; subtract idle power.

    `work` returns how many inferences it did, or the perf_counter() time each finished, which
    also yields per-segment joules-per-inference samples (for `edgepipe compare --metric
    energy`). The idle baseline is measured first for `idle_s` with nothing running, so the
    result is the energy the inferences added, not what the board burns anyway.
    """
    meter.check()
    unwrap = getattr(meter, "unwrap", lambda a, b: b - a)
    idle = _Sampler(meter, rate_hz)
    idle.start()
    time.sleep(idle_s)
    idle_trace = idle.stop()
    idle_seconds = idle_trace[-1][0] - idle_trace[0][0]
    idle_w = _integrate(idle_trace, unwrap) / idle_seconds if idle_seconds > 0 else 0.0
    active = _Sampler(meter, rate_hz)
    active.start()
    done = work()
    trace = active.stop()
    count = len(done) if isinstance(done, list) else done
    seconds = trace[-1][0] - trace[0][0]
    joules = _integrate(trace, unwrap)
    added = max(joules - idle_w * seconds, 0.0)
    power = [(round(t1 - trace[0][0], 4), round(_integrate([(t0, a), (t1, b)], unwrap) / (t1 - t0), 4))
             for (t0, a), (t1, b) in pairwise(trace) if t1 > t0]
    return {"available": True, "meter": meter.name,
            "joules_per_inference": added / count if count else None,
            "mean_active_power_w": joules / seconds if seconds > 0 else None, "idle_power_w": idle_w,
            "window_s": seconds, "inferences": count, "samples": len(trace), "rate_hz": rate_hz,
            "resolution_j": meter.resolution_j,
            "power_trace_w": power[:: max(1, len(power) // 500)],  # (seconds, watts), at most ~500 points
            "samples_j_per_inference": _segment_samples(trace, unwrap, idle_w, done, segment_s)
            if isinstance(done, list) else [],
            "method": "idle baseline subtracted; counter deltas or trapezoid-integrated power"}
