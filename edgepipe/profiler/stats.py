"""Summary statistics of raw latency samples."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary(samples_ms: Sequence[float], batch: int = 1) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    mean = float(values.mean())
    return {
        "min": float(values.min()),
        "mean": mean,
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "p99": float(np.percentile(values, 99)),
        "max": float(values.max()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "throughput_per_s": batch * 1000.0 / mean if mean > 0 else 0.0,
    }
